"""What every experiment does: build codecs from the config, feed them data, train the stages, load a run.

    train(cfg, run_dir)   codec pre-stage for trainable codecs without weights (stats fitted, saved under
                          codecs/<role>/), then the configured stage through the Trainer
    load_run(run_dir)     config, codecs and the EMA prior of a run's latest checkpoint

Data comes from a source (latentbridge.data.sources) chosen by `data.name`; each role's codec takes
the field matching its modality, passed through the codec's `augment` for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from latentbridge.codecs import Codec
from latentbridge.config import ExperimentConfig
from latentbridge.data.sources import field_for, make_source
from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.plugins import CodecRegistry, registry as default_registry, resolve_codec_configs
from latentbridge.prior import BlockCausalDiT
from latentbridge.sequence import SequenceLayout
from latentbridge.tasks import TaskBatch, TaskMixture, tasks_of
from latentbridge.train.latent_cache import LatentCache
from latentbridge.train.trainer import Trainer, experiment_prior_config


def build_codecs(cfg: ExperimentConfig, reg: CodecRegistry, source: Any = None) -> dict[str, Codec]:
    """Each role's codec: loaded from `pretrained` (with `config` fields changed on top, weights kept) or built new.

    With `source`, every role is checked to have a field of its codec's modality in that data."""
    configs = resolve_codec_configs(cfg, reg)
    codecs = {}
    for role, slot in cfg.codecs.items():
        if source is not None:
            field_for(source, role, reg.get(slot.codec).modality)
        if slot.pretrained:
            meta = Codec.read_meta(slot.pretrained)
            if meta["codec"] != slot.codec:
                raise ConfigError(f"codecs.{role}.pretrained: {slot.pretrained} holds codec '{meta['codec']}', but codecs.{role}.codec "
                                  f"is '{slot.codec}'. Make them agree.")
            try:
                codecs[role] = reg.load(slot.pretrained, slot.config or None)
            except ConfigError as err:
                raise ConfigError(f"codecs.{role}.config on top of {slot.pretrained}: {err}") from None
        else:
            codecs[role] = reg.get(slot.codec)(configs[role])
    return codecs


def role_items(codecs: dict[str, Codec], raw: dict[str, list], source: Any, gen: torch.Generator | None = None) -> dict[str, Any]:
    """Raw items by field -> each role's collated batch (augmented for training when `gen` is given)."""
    out = {}
    for role, codec in codecs.items():
        items = raw[field_for(source, role, codec.modality)]
        out[role] = codec.collate(codec.augment(items, gen) if gen is not None else items)
    return out


def _role_field(parts: list, mix: TaskMixture, role: str, codec: Codec) -> list:
    """The items of `role` gathered over a mixture's parts [(task, raw by field)]."""
    out: list = []
    for task, raw in parts:
        out += raw[field_for(mix.source(task), role, codec.modality)]
    return out


def train(cfg: ExperimentConfig, run_dir: str | Path, *, reg: CodecRegistry | None = None, resume: bool = False,
          init_from: str | Path | None = None, progress: bool = True):
    """Codec pre-stage for trainable codecs without weights, then the configured stage, through the Trainer.

    One `task` reads `data`; a `tasks` mixture draws each batch from its tasks' data sets by weight
    (latentbridge.tasks). Returns (codecs, prior with EMA weights or None, layout or None).
    """
    run_dir = Path(run_dir)
    reg = reg or default_registry()
    tasks = tasks_of(cfg)
    torch.manual_seed(cfg.seed)
    mixture = bool(cfg.tasks)
    if mixture:
        mix = TaskMixture(tasks, cfg.seed)
        codecs = build_codecs(cfg, reg)
        mix.check_fields({r: c.modality for r, c in codecs.items()})
        unused = [r for r in codecs if not any(r in t.roles for t in tasks)]
        if unused:
            raise ConfigError(f"codecs {', '.join(unused)} are in no task of the mixture; use them in a task or remove them.")
        source = None
    else:
        source = make_source(cfg.data, cfg.seed)
        codecs = build_codecs(cfg, reg, source)

    def batches(step: int, size: int, gen: torch.Generator) -> dict[str, Any] | TaskBatch:
        if mixture:
            return TaskBatch([(t, role_items({r: codecs[r] for r in t.roles}, raw, mix.source(t), gen))
                              for t, raw in mix.batch(step, size, gen)])
        return role_items(codecs, source.batch(step, size, gen), source, gen)

    def codec_batches(role: str):
        if not mixture:
            return batches
        codec = codecs[role]

        def fn(step: int, size: int, gen: torch.Generator) -> dict[str, Any]:
            items = _role_field(mix.role_batch(role, step, size, gen), mix, role, codec)
            return {role: codec.collate(codec.augment(items, gen))}
        return fn

    stage = cfg.train.stage
    own = (cfg.train.codec_role or cfg.task.target) if stage in ("codec", "joint") else None
    if stage in ("codec", "joint") and not own:
        raise ConfigError(f"train.stage={stage} trains one codec: set train.codec_role to its role.")

    def finish_codec(role: str) -> None:  # fit the stats of a codec trained here, keep it in the run directory
        codec = codecs[role]
        if not cfg.codecs[role].pretrained:
            if mixture:
                items = _role_field(mix.stats_sample(role, 4096), mix, role, codec)
            else:
                items = source.stats_sample(4096)[field_for(source, role, codec.modality)]
            codec.fit_stats([codec.collate(items[i : i + 256]) for i in range(0, len(items), 256)])
        codec.save_pretrained(run_dir / "codecs" / role)

    for role, codec in codecs.items():  # codec pre-stage: trainable codecs without weights, except the stage's own
        saved = run_dir / "codecs" / role
        if resume and (saved / "codec.json").exists() and role != own:
            codecs[role] = reg.load(saved).freeze()
            continue
        if role == own and stage == "codec":
            continue
        slot = cfg.codecs[role]
        steps = cfg.train.codec_steps if slot.steps is None else slot.steps
        if codec.trainable and not slot.pretrained and steps:
            Trainer(cfg, run_dir, codecs, codec_batches(role), stage="codec", role=role, steps=steps,
                    lr=slot.lr or cfg.train.codec_lr, batch_size=slot.batch_size, progress=progress and mixture,
                    checkpoints=False).fit()
        codec.freeze()
        finish_codec(role)
    caches = {}
    if cfg.train.cache_latents and stage != "codec":
        if mixture:
            raise ConfigError("train.cache_latents works for one `task`; a task mixture encodes its items each step. "
                              "Set train.cache_latents=false.")
        if not source.finite:
            raise ConfigError("train.cache_latents needs a fixed data set: set data.path (the ring is sampled afresh each step).")
        if any(type(c).augment is not Codec.augment for r, c in codecs.items() if r != own):
            raise ConfigError("train.cache_latents: a codec draws a training view of each item (augment), so its latents change "
                              "from step to step and cannot be cached. Set train.cache_latents=false.")
        root = Path(cfg.train.latent_cache_dir or run_dir / "latent_cache")
        for role, codec in codecs.items():
            if role != own:
                caches[role] = LatentCache.build_or_load(root, role, codec, source.key(), len(source),
                                                         lambda idx, r=role: role_items({r: codecs[r]}, source.items_at(idx), source)[r])

    def cached_batches(step: int, size: int, gen: torch.Generator) -> dict[str, Any] | TaskBatch:
        items = batches(step, size, gen)
        if caches:
            idx = source.indices(step, size)
            items.update({role: cache.posterior(idx) for role, cache in caches.items()})
        return items

    main_batches = codec_batches(own) if stage == "codec" else cached_batches
    trainer = Trainer(cfg, run_dir, codecs, main_batches, resume=resume, init_from=init_from, progress=progress)
    trainer.fit()
    weights = trainer.ema_weights()
    if own is not None:
        codecs[own].load_state_dict({k.removeprefix("codec."): v for k, v in weights.items() if k.startswith("codec.")}, strict=True)
        codecs[own].freeze()
        finish_codec(own) if stage == "codec" else codecs[own].save_pretrained(run_dir / "codecs" / own)
    if stage == "codec":
        return codecs, None, None
    prior = BlockCausalDiT(trainer.prior_config)
    prior.load_state_dict({k.removeprefix("prior."): v for k, v in weights.items() if k.startswith("prior.")}, strict=True)
    return codecs, prior.eval(), trainer.layout


def load_run(run_dir: str | Path, reg: CodecRegistry | None = None, *, need_prior: bool = True):
    """Config, codecs and EMA prior of a trained run directory (its latest checkpoint).

    Returns (cfg, codecs, prior or None, layout or None); the prior is None for a codec-stage run
    when need_prior is False.
    """
    from latentbridge.config import load_config
    from latentbridge.train.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml). Pass a directory written by `latentbridge train`.")
    cfg = load_config(run_dir / "config.yaml")
    reg = reg or default_registry()
    missing = [role for role in cfg.codecs if not (run_dir / "codecs" / role / "codec.json").is_file()]
    if missing:
        raise ConfigError(f"{run_dir} has no trained codec for role(s) {', '.join(missing)} (codecs/<role>/ is missing); "
                          "finish its training first (latentbridge train ... --resume).")
    codecs = {role: reg.load(run_dir / "codecs" / role).freeze() for role in cfg.codecs}
    if cfg.train.stage == "codec":
        if need_prior:
            raise ConfigError(f"{run_dir} is a codec-stage run: it has no prior to sample from. Train a prior on its codec "
                              f"(codecs.<role>.pretrained: {run_dir}/codecs/<role>) and sample that run.")
        return cfg, codecs, None, None
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint to sample from; train it first (latentbridge train).")
    ckpt = load_checkpoint(path)
    weights = ckpt["ema"] or ckpt["model"]
    weights = {k.removeprefix("module."): v for k, v in weights.items() if k != "n_averaged"}
    layout = SequenceLayout.from_specs({role: codecs[role].latent_spec for role in cfg.codecs})
    prior = BlockCausalDiT(experiment_prior_config(cfg, layout))
    try:
        prior.load_state_dict({k.removeprefix("prior."): v for k, v in weights.items() if k.startswith("prior.")}, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: prior weights do not fit the run's config ({' '.join(str(err).split())[:300]}).") from None
    return cfg, codecs, prior.eval(), layout
