"""Training an experiment end to end: `latentbridge train FILE`.

    train(cfg, run_dir)   the codec pre-stage for trainable codecs without weights (each on its own loss, stats
                          fitted, saved under codecs/<role>/), then the configured stage through the Trainer

Data comes from the registered data sets the tasks name (latentbridge.tasks); each role's codec takes the
field of its modality, passed through the codec's `augment` for training. One `task` reads its data set in
per-epoch permutations; a `tasks` mixture draws each batch from its tasks' data sets by weight.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from latentbridge.build import build_codecs, resolve_codec_configs
from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.plugins import Registries, registries
from latentbridge.tasks import TaskMixture, role_items, tasks_of
from latentbridge.train.feed import Feed
from latentbridge.train.latent_cache import CachedStream, LatentCache, build_cache
from latentbridge.train.rundir import RunLock, check_run_dir
from latentbridge.train.trainer import Trainer
from latentbridge.typedconfig import save_config


def gather_role(parts: list, mix: TaskMixture, role: str, modalities: dict[str, str]) -> list:
    """The items of `role` gathered over a mixture's parts [(task, raw by field)] (taken out of documents too)."""
    out: list = []
    for task, raw in parts:
        out += role_items(task, mix.source(task), raw, role, modalities)
    return out


def stage1_dir(run_dir: Path, role: str) -> Path:
    """Where a joint run keeps its own codec as the codec stage left it (the joint stage's KL anchor)."""
    return Path(run_dir) / "stage1" / role


def pre_stage_dir(run_dir: Path, role: str) -> Path:
    """Where a codec pre-stage keeps its checkpoints until its codec is finished and saved under codecs/<role>."""
    return Path(run_dir) / "stages" / role


def codec_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """The codec's part of a trainer's weights (keys codec.*), keyed as the codec's own state_dict."""
    return {k.removeprefix("codec."): v for k, v in weights.items() if k.startswith("codec.")}


def train(cfg: ExperimentConfig, run_dir: str | Path, *, reg: Registries | None = None, resume: bool = False,
          init_from: str | Path | None = None, progress: bool = True):
    """Codec pre-stage for trainable codecs without weights, then the configured stage, through the Trainer.

    One `task` reads `data`; a `tasks` mixture draws each batch from its tasks' data sets by weight
    (latentbridge.tasks). Returns (codecs, prior with EMA weights or None, layout or None).
    """
    run_dir = Path(run_dir)
    reg = reg or registries()
    _distributed()
    resolve_codec_configs(cfg, reg.codecs)  # codec names and options checked, each codec's config filled in, before any work
    tasks_of(cfg, reg)  # so are data-set names and options
    with RunLock(run_dir):  # one trainer per run directory; refused at once, naming the holder
        check_run_dir(run_dir, resume, cfg)  # before anything is written: a new run never lands on another's work
        if not resume and int(os.environ.get("RANK", "0")) == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")  # from here a kill leaves a run --resume continues
        return _train(cfg, run_dir, reg, resume=resume, init_from=init_from, progress=progress)


def _train(cfg: ExperimentConfig, run_dir: Path, reg: Registries, *, resume: bool, init_from: str | Path | None,
           progress: bool):
    tasks = tasks_of(cfg, reg)
    torch.manual_seed(cfg.seed)
    mixture = bool(cfg.tasks)
    mix = TaskMixture(tasks, cfg.seed, reg)
    modalities = {r: reg.codecs.get(s.codec).modality for r, s in cfg.codecs.items()}
    mix.check_fields(modalities)  # before building any codec
    source = None if mixture else mix.source(tasks[0])
    if mixture:
        unused = [r for r in modalities if not any(r in t.roles for t in tasks)]
        if unused:
            raise ConfigError(f"codecs {', '.join(unused)} are in no task of the mixture; use them in a task or remove them.")
    elif not tasks[0].document:  # one task encodes every role's items from its data set
        for role, modality in modalities.items():
            source.field(modality, role)
    codecs = build_codecs(cfg, reg)
    teacher = None
    if cfg.train.objective == "distill" and cfg.train.stage != "codec":
        teacher, codecs = _teacher(cfg, reg, codecs)

    def codec_feed(role: str) -> Feed:
        return Feed(mix, codecs, cfg.seed, role=role)

    stage = cfg.train.stage
    own = (cfg.train.codec_role or cfg.task.target) if stage in ("codec", "joint") else None
    if stage in ("codec", "joint") and not own:
        raise ConfigError(f"train.stage={stage} trains one codec: set train.codec_role to its role.")

    def finish_codec(role: str, directory: Path) -> None:  # fit the stats of a codec trained here, keep it in the run
        codec = codecs[role]
        if not cfg.codecs[role].pretrained and not codec.publishes_stats:  # stats a wrapped model publishes are kept
            if mixture:
                items = gather_role(mix.stats_sample(role, 4096), mix, role, modalities)
            else:
                items = role_items(tasks[0], source, source.stats_sample(4096), role, modalities)
            codec.fit_stats([codec.collate(items[i : i + 256]) for i in range(0, len(items), 256)])
        if _main_process():  # every process holds the same codec; two writers would race for the directory's rename
            codec.save_pretrained(directory)

    for role, codec in codecs.items():  # codec pre-stage: trainable codecs without weights, except the stage's own
        # the joint stage's own codec keeps its stage-1 weights apart (stage1/<role>/): the joint checkpoints hold
        # the codec as the joint stage changes it, and a resume must start from stage 1 again, not retrain it
        saved = stage1_dir(run_dir, role) if stage == "joint" and role == own else run_dir / "codecs" / role
        if resume and (saved / "codec.json").exists() and not (stage == "codec" and role == own):
            codecs[role] = reg.codecs.load(saved).freeze()
            if int(os.environ.get("RANK", "0")) == 0:
                shutil.rmtree(pre_stage_dir(run_dir, role), ignore_errors=True)  # left by a kill right after it finished
            continue
        if role == own and stage == "codec":
            continue
        if teacher is not None:  # distillation: the teacher's trained codecs, kept as they are (stats included)
            if _main_process():
                codec.save_pretrained(saved)
            continue
        slot = cfg.codecs[role]
        # a codec wrapping trained weights is used frozen unless its role asks for a pre-stage (codecs.<role>.steps)
        steps = (slot.steps or 0) if codec.ships_weights else cfg.train.codec_steps if slot.steps is None else slot.steps
        if codec.trainable and not slot.pretrained and steps:
            # the pre-stage checkpoints into stages/<role>/checkpoints, so a kill in it resumes it (and its finished
            # codec is kept under codecs/<role>, which a resume loads instead of training again)
            pre = Trainer(cfg, run_dir, codecs, codec_feed(role), stage="codec", role=role, steps=steps, tasks=tasks,
                          lr=slot.lr or cfg.train.codec_lr, batch_size=slot.batch_size, progress=progress and mixture,
                          ckpt_root=pre_stage_dir(run_dir, role) / "checkpoints", resume=resume)
            try:
                pre.fit()
            finally:
                pre.batches.close()  # its loader workers end here
            codec.load_state_dict(codec_weights(pre.ema_weights()), strict=True)  # what it samples with: the EMA
        codec.freeze()
        finish_codec(role, saved)
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(pre_stage_dir(run_dir, role), ignore_errors=True)  # the finished codec is what is kept
    documents = [t.name for t in tasks if t.document]
    if documents and stage == "joint":
        raise ConfigError(f"train.stage=joint trains one codec beside the prior on one task's items; {', '.join(documents)} "
                          "are document tasks, which it does not take yet. Train the codecs first (stage prior).")
    caches = {}
    if cfg.train.cache_latents and stage != "codec":
        if documents:
            raise ConfigError(f"train.cache_latents: {', '.join(documents)} are document tasks, whose items vary in number "
                              "and kind per example; they are encoded each step. Set train.cache_latents=false.")
        root = Path(cfg.train.latent_cache_dir or run_dir / "latent_cache")
        caches = latent_caches(mix, {r: c for r, c in codecs.items() if r != own}, root, own=own, progress=progress)

    main_batches = codec_feed(own) if stage == "codec" else Feed(mix, codecs, cfg.seed, caches=caches)
    trainer = Trainer(cfg, run_dir, codecs, main_batches, resume=resume, init_from=init_from,
                      progress=progress, tasks=tasks, registries=reg, teacher=teacher)
    try:
        trainer.fit()
    finally:
        main_batches.close()
    weights = trainer.ema_weights()
    if own is not None:
        codecs[own].load_state_dict(codec_weights(weights), strict=True)
        codecs[own].freeze()
        if stage == "codec":
            finish_codec(own, run_dir / "codecs" / own)
        elif _main_process():
            codecs[own].save_pretrained(run_dir / "codecs" / own)
    if stage == "codec":
        return codecs, None, None
    return codecs, trainer.export_prior(weights), trainer.layout  # same backbone, then the EMA weights


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _teacher(cfg: ExperimentConfig, reg: Registries, codecs: dict) -> tuple[Any, dict]:
    """Objective distill: the teacher run's EMA prior (frozen) and its trained codecs, which the student uses (it
    learns jumps in the teacher's latent space; its weights start from the teacher's, see Trainer._init_from)."""
    from latentbridge.runs import load_run

    if not cfg.train.teacher:
        raise ConfigError("train.objective=distill learns from a trained flow prior: set train.teacher to its run directory.")
    run = load_run(cfg.train.teacher, reg)
    mine = {r: s.codec for r, s in cfg.codecs.items()}
    theirs = {r: s.codec for r, s in run.cfg.codecs.items()}
    if mine != theirs:
        raise ConfigError(f"train.teacher {cfg.train.teacher}: its codecs {theirs} are not this experiment's {mine}; the student "
                          "learns in the teacher's latents, so use the teacher's codecs and roles.")
    if run.prior.takes_step:
        raise ConfigError(f"train.teacher {cfg.train.teacher} is itself a jump (shortcut/distilled) prior; distil a flow prior.")
    return run.prior, dict(run.codecs)


def latent_caches(mix: TaskMixture, frozen: dict[str, Any], root: Path, *, own: str | None = None,
                  progress: bool = True) -> dict[str, dict[str, LatentCache]]:
    """Build or reuse the latent cache of every data set of the tasks, over the roles its tasks use (all but `own`,
    the codec a joint stage trains): data-set key -> role -> LatentCache. A streaming data set is replaced in `mix` by
    the stream of its cached latents. Every data set must hold fixed items and no cached codec may augment."""
    plan: dict[str, list[str]] = {}
    for key, source in mix.sources.items():  # every data set checked before any is encoded
        users = [t for t in mix.tasks if t.data is not None and mix.key(t) == key]
        roles = list(dict.fromkeys(r for t in users for r in t.roles if r != own))
        if not _fixed_items(source):
            raise ConfigError(f"train.cache_latents needs a data set of fixed items; '{source.name}' draws fresh items "
                              "each step (for the toy ring: set data.config.path). Set train.cache_latents=false.")
        augmenting = [r for r in roles if frozen[r].augments]
        if augmenting:
            raise ConfigError(f"train.cache_latents: codec(s) {', '.join(augmenting)} draw a training view of each item "
                              "(augment), so their latents change from step to step and cannot be cached. Set "
                              "train.cache_latents=false.")
        if getattr(source, "streaming", False) and len(roles) < len({r for t in users for r in t.roles}):
            raise ConfigError("train.cache_latents on a streaming data set trains the prior stage only (the joint stage also "
                              "reads the items its own codec encodes). Use train.stage=prior, or train.cache_latents=false.")
        if roles:
            plan[key] = roles
    out: dict[str, dict[str, LatentCache]] = {}
    for key, roles in plan.items():
        source = mix.sources[key]
        out[key] = build_cache(root, {r: frozen[r] for r in roles}, source, progress=progress)
        if getattr(source, "streaming", False):  # training streams the cached latents, shard by shard
            mix.sources[key] = CachedStream(source, out[key])
    return out


def _fixed_items(source: Any) -> bool:
    """Whether a data set holds fixed items a latent cache can keep (finite, or streamed from files)."""
    return source.finite or getattr(source, "streaming", False)


def _distributed() -> None:
    """Join the process group when launched by torchrun (before any data is read: each process reads its own part)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def cache(cfg: ExperimentConfig, run_dir: str | Path | None = None, *, reg: Registries | None = None,
          progress: bool = True) -> dict[str, Path]:
    """`latentbridge cache FILE`: encode the training items of the tasks' data sets with the frozen codecs into the
    latent caches that training with train.cache_latents reads (under torchrun, each process its own shards; a killed
    run continues).

    Codecs come from `run_dir`/codecs/<role> when that run trained them, else from their pretrained weights.
    Returns role -> cache directory (with several data sets: '<data set> (<its tasks>)/<role>' -> directory)."""
    reg = reg or registries()
    _distributed()
    tasks = tasks_of(cfg, reg)
    documents = [t.name for t in tasks if t.document]
    if documents:
        raise ConfigError(f"latentbridge cache: {', '.join(documents)} are document tasks, whose items are encoded each step; "
                          "there is nothing fixed to cache.")
    mix = TaskMixture(tasks, cfg.seed, reg)
    for source in mix.sources.values():
        if not _fixed_items(source):
            raise ConfigError(f"data set '{source.name}' draws fresh items each step: there is nothing fixed to cache.")
    if not (cfg.train.latent_cache_dir or run_dir):
        raise ConfigError("latentbridge cache: say where the cache goes: --run-dir RUN (RUN/latent_cache) or "
                          "--train.latent_cache_dir=DIR (shared by runs).")
    codecs = build_codecs(cfg, reg)
    modalities = {}
    for role, codec in list(codecs.items()):
        saved = Path(run_dir) / "codecs" / role if run_dir else None
        if saved is not None and (saved / "codec.json").exists():
            codecs[role] = reg.codecs.load(saved)
        elif codec.trainable and not cfg.codecs[role].pretrained:
            raise ConfigError(f"codecs.{role}: codec '{codec.name}' has no trained weights to encode with. Set codecs.{role}."
                              "pretrained to its saved directory, or pass --run-dir of a run whose codec stage trained it.")
        codecs[role].freeze()
        modalities[role] = codecs[role].modality
    mix.check_fields(modalities)
    root = Path(cfg.train.latent_cache_dir or Path(run_dir) / "latent_cache")
    caches = latent_caches(mix, codecs, root, progress=progress)
    if len(caches) == 1:
        return {role: c.directory for by_role in caches.values() for role, c in by_role.items()}
    label = {key: f"{mix.sources[key].name} ({', '.join(t.name for t in tasks if mix.key(t) == key)})" for key in caches}
    return {f"{label[key]}/{role}": c.directory for key, by_role in caches.items() for role, c in by_role.items()}
