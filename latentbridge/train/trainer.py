"""One accelerate trainer for the three stages (ARCHITECTURE.md §6).

    codec  one codec trains on its own loss (named terms logged separately)
    prior  codecs frozen; the prior learns flow matching over the task's examples
    joint  a trainable codec plus the prior (Cola DLM's best regime): the prior's loss reaches the
           codec through the noisy copy only (clean history is stop-gradient), the codec keeps its
           own loss, and a KL to a frozen copy of its stage-1 encoder stops it drifting

Each process reads and encodes only its slice of a step's global batch (latentbridge.train.feed: indices from
(seed, step), or its own shards of a streaming data set, whose positions go into the checkpoints), and every
example draws its randomness (posterior sample, condition dropout, noise, times) from a generator seeded by
(seed, step, its position in the global batch). So a resumed run repeats the uninterrupted one exactly, and
two processes compute what one does. The stage's loss is computed inside one module's forward, so DDP/FSDP
wrap it.

Run directory: config.yaml, metrics.jsonl, checkpoints/step_NNNNNNN/ + checkpoints/latest, loss.png.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch import distributed as dist
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from latentbridge import __version__
from latentbridge.build import build_prior
from latentbridge.codecs import Codec, Posterior
from latentbridge.config import ExperimentConfig
from latentbridge.errors import CheckpointError, ConfigError, LatentbridgeError, StoppedError
from latentbridge.flow import make_time_sampler
from latentbridge.plugins import Registries
from latentbridge.prior import PriorBackbone
from latentbridge.sequence import SequenceLayout, drop_conditions
from latentbridge.typedconfig import dump_yaml, from_dict, parse_yaml, save_config, to_dict
from latentbridge.versions import provider_of
from latentbridge.checkpoint import (clean_partial, latest_checkpoint, load_checkpoint, save_checkpoint, step_name, temp_dir,
                                     write_failure)
from latentbridge.train import parallel
from latentbridge.train.feed import LocalBatch, example_generator
from latentbridge.train.metrics import plot_losses, read_metrics_file
from latentbridge.train.objective import BatchNoise, draw_noise, prior_loss
from latentbridge.train.optim import build_optimizer, lr_schedule
from latentbridge.train.signals import StopSignals

STEP_PAUSE_ENV = "LATENTBRIDGE_STEP_PAUSE_S"  # fault injection for tests: sleep after each step (a kill lands between checkpoints)

# Changing any of these between a checkpoint and a resume changes what the weights mean.
ARCHITECTURE_KEYS = ("prior", "codecs", "task", "train.stage", "train.codec_role")


class TrainingError(LatentbridgeError):
    """Training cannot go on (a NaN loss, an incompatible resume)."""


class StageLoss(nn.Module):
    """The loss of one stage as one module: trainable parts registered, frozen codecs held aside."""

    def __init__(self, stage: str, cfg: ExperimentConfig, codecs: dict[str, Codec], prior: PriorBackbone | None,
                 layout: SequenceLayout | None, role: str | None, tasks: list, teacher: PriorBackbone | None = None) -> None:
        super().__init__()
        self.stage, self.cfg, self.role, self.layout = stage, cfg, role, layout
        self.trainable = nn.ModuleDict()
        if prior is not None:
            self.trainable["prior"] = prior
        if role is not None and stage in ("codec", "joint"):
            self.trainable["codec"] = codecs[role].train().requires_grad_(True)
        self.frozen = {r: c.freeze() for r, c in codecs.items() if not (stage in ("codec", "joint") and r == role)}
        self.stage1 = copy.deepcopy(codecs[role]).freeze() if stage == "joint" else None
        self.samplers = {
            r: make_time_sampler(s.time_sampler.kind, s.time_sampler.loc, s.time_sampler.scale, codecs[r].latent_spec.dim)
            for r, s in cfg.codecs.items()
        }
        self.codecs = codecs
        t = cfg.train
        jumps = t.objective in ("shortcut", "distill") and stage != "codec"
        # distillation: every block learns a jump (from the teacher); shortcut: a share (from the prior itself)
        self.shortcut = ((1.0 if t.objective == "distill" else t.shortcut_fraction), t.shortcut_finest) if jumps else None
        if self.shortcut is not None and not (prior is not None and prior.takes_step):
            raise ConfigError(f"train.objective={t.objective} trains jumps, so the prior must take a step span: set "
                              "prior.step_conditioning: true (the built-in `dit`; a plugin backbone needs takes_step).")
        # held aside like the frozen codecs (not a submodule: DDP/FSDP and the checkpoints see only `trainable`)
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval() if teacher is not None else None)
        if t.teacher_guidance != 1.0 and t.objective != "distill":
            raise ConfigError(f"train.teacher_guidance {t.teacher_guidance} folds a teacher's guidance into a distilled student; "
                              "it needs train.objective=distill (or leave it at 1.0).")
        if t.objective == "distill" and stage != "codec" and self.teacher is None:
            raise ConfigError("train.objective=distill learns from a trained flow prior: set train.teacher to its run directory.")
        if t.objective in ("shortcut", "distill") and t.shortcut_finest & (t.shortcut_finest - 1):
            raise ConfigError(f"train.shortcut_finest must be a power of two (the jumps halve down to it), got {t.shortcut_finest}.")
        self.tasks = list(tasks) if stage != "codec" else []
        if stage != "codec" and not self.tasks:
            raise ConfigError("the prior and joint stages need the experiment's tasks (latentbridge.tasks.tasks_of).")
        if stage == "joint" and len(self.tasks) > 1:
            raise ConfigError("train.stage=joint trains one codec with the prior on one task; a task mixture trains with "
                              "train.stage=prior (frozen codecs). Use stage prior, or one `task`.")

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` (what accelerate's prepare calls) moves the frozen codecs and the stage-1 copy too: they are held
        outside the trained modules, but their encodes must run where the prior runs."""
        super()._apply(fn, recurse)
        for held in [*self.frozen.values(), *([self.stage1] if self.stage1 is not None else []),
                     *([self.teacher] if self.teacher is not None else [])]:
            held._apply(fn, recurse)
        return self

    def _latents(self, role: str, batch: Any, gens: list[torch.Generator]) -> list[Tensor]:
        """Each example's latents of `role`: a posterior sample drawn with the example's own generator (or the mean)."""
        codec = self.codecs[role]
        sample = self.cfg.codecs[role].latents == "sample"
        grad = self.stage == "joint" and role == self.role
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if isinstance(batch, Posterior):  # from a latent cache (read on the host): to where the codec runs
                dev = codec.stats.shift.device
                post = Posterior(batch.mean.to(dev), batch.lengths.to(dev), None if batch.logvar is None else batch.logvar.to(dev))
            elif grad:  # the codec a joint stage trains runs under the stage's autocast, like the prior
                post = codec.raw_encode(batch)
            else:  # a frozen codec encodes in its own dtype, as the latent cache does (bf16 only rounds the targets)
                with torch.autocast(codec.device.type, enabled=False):
                    post = codec.raw_encode(batch)
            codec.check_posterior(post)
            if sample and post.logvar is not None:
                post = Posterior(post.mean + torch.exp(0.5 * post.logvar) * _example_noise(post, gens), post.lengths)
            out = codec.latents_from_posterior(post).unbind()
        return [v.float() for v in out]  # flow targets in fp32, also when the codec ran under autocast

    def forward(self, items: LocalBatch | dict[str, Any]) -> dict[str, Tensor]:
        if self.stage == "codec":
            return self.codecs[self.role].loss(items[self.role])
        cfg = self.cfg
        examples, noises = [], []
        for part in items.parts:  # this process's examples only, each with its own randomness
            gens = [example_generator(cfg.seed, items.index, p, 1) for p in part.positions]
            if part.documents is None:
                latents = {r: self._latents(r, part.batch[r], gens) for r in part.task.roles}
            else:  # a document's items: item k of the example at position p samples its posterior with (p, 32 + k)
                latents = {}
                for r, batch in part.batch.items():
                    owner = [(p, k) for p, doc in zip(part.positions, part.documents) for k, (role, _) in enumerate(doc)
                             if role == r]
                    latents[r] = self._latents(r, batch, [example_generator(cfg.seed, items.index, p, 32 + k) for p, k in owner])
            for ex, g in zip(part.task.examples(latents, part.documents), gens):
                ex = drop_conditions([ex], cfg.train.cond_dropout, g, each=cfg.train.cond_dropout_mode == "each")[0]
                examples.append(ex)
                noises.append(draw_noise([ex], self.layout, self.samplers, g, shortcut=self.shortcut))
        out = prior_loss(self.trainable["prior"], self.layout, examples, noise=BatchNoise.cat(noises),
                         row_length=cfg.train.row_length, mean_count=_mean_over_processes if _world() > 1 else None,
                         teacher=self.teacher, teacher_substeps=cfg.train.teacher_substeps,
                         teacher_guidance=cfg.train.teacher_guidance,
                         loss_weights={r: s.loss_weight for r, s in cfg.codecs.items()}, switch_weight=cfg.train.switch_weight)
        if self.stage == "joint":
            codec, mine = self.codecs[self.role], items.parts[0].batch[self.role]
            own = codec.loss(mine)
            post, post0 = codec.raw_encode(mine), self.stage1.raw_encode(mine)
            drift = post.kl_to(post0)[post.mask()].mean()
            t = cfg.train
            out = {"loss": out["loss"] + t.joint_codec_weight * own["loss"] + t.joint_kl_weight * drift, "flow": out["loss"],
                   "kl_to_stage1": drift, **{f"codec/{k}": v for k, v in own.items()}}
        return out


def _example_noise(post: Posterior, gens: list[torch.Generator]) -> Tensor:
    """Standard normal noise shaped like post.mean, each item's valid rows drawn (on the CPU) from its own generator,
    so an example's posterior sample does not depend on the batch it is in or the device."""
    eps = torch.zeros(post.mean.shape, dtype=torch.float32)
    dim = post.mean.shape[-1]
    for i, (n, g) in enumerate(zip(post.lengths.tolist(), gens)):
        eps[i, :n] = torch.randn(n, dim, generator=g)
    return eps.to(post.mean.device, post.mean.dtype)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mean_over_processes(x: Tensor) -> Tensor:
    """The mean of x over the processes (all-reduced): each process divides its loss sum by the same count."""
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def ema_avg_fn(decay: float, warmup: bool) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """AveragedModel's multi_avg_fn: ema <- d ema + (1 - d) w, with d = min(decay, (1 + n) / (10 + n)) when warming up.

    n counts the updates averaged so far (AveragedModel copies the weights at the first one). Without warm-up the
    weights of that first step keep a share decay^(steps - 1) of the EMA for good."""

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        sharded = [isinstance(e, DTensor) for e in ema_params]  # under FSDP: sharded parameters beside plain buffers
        for kind in {*sharded}:  # one foreach call may not mix the two
            pick = [i for i, s in enumerate(sharded) if s == kind]
            torch._foreach_lerp_([ema_params[i] for i in pick], [params[i] for i in pick], 1.0 - d)

    return update


class Trainer:
    """Train one stage of an experiment into a run directory."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, codecs: dict[str, Codec],
                 batches: Callable[[int, int, slice], Any], *, stage: str | None = None,
                 role: str | None = None, steps: int | None = None, lr: float | None = None, batch_size: int | None = None,
                 resume: bool = False,
                 init_from: str | Path | None = None,
                 progress: bool = True, checkpoints: bool = True, tasks: list | None = None,
                 ckpt_root: str | Path | None = None, registries: Registries | None = None,
                 teacher: PriorBackbone | None = None) -> None:
        t = cfg.train
        self.cfg, self.run_dir, self.codecs, self.batches = cfg, Path(run_dir), codecs, batches
        self._ckpt_root = Path(ckpt_root) if ckpt_root is not None else None
        self.stage = stage or t.stage
        self.steps = t.steps if steps is None else steps
        self.lr = t.lr if lr is None else lr
        self.progress, self.checkpoints = progress, checkpoints
        self.role = role or t.codec_role or (cfg.task.target or None if self.stage != "prior" else None)
        if self.stage in ("codec", "joint") and (self.role not in codecs or not codecs[self.role].trainable):
            raise ConfigError(f"train.stage={self.stage} trains one codec: set train.codec_role to a role with a trainable codec "
                              f"(roles: {', '.join(r for r, c in codecs.items() if c.trainable)}).")
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            raise ConfigError("accelerate was launched with --use_fsdp (or an FSDP accelerate config): latentbridge shards by "
                              "itself. Launch without it (distributed_type MULTI_GPU, e.g. configs/accelerate/one_node.yaml) "
                              "and set train.parallel: fsdp.")
        log_with = ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision, why = parallel.resolve_precision(t.mixed_precision, device)
        self.acc = Accelerator(mixed_precision=self.precision, log_with=log_with, project_dir=str(self.run_dir),
                               cpu=device == "cpu")  # cpu=True lets torchrun processes form a gloo group
        if why and self.acc.is_main_process:
            warnings.warn(why, stacklevel=2)
        world = self.acc.num_processes
        self.batch_size = batch_size or t.batch_size
        if self.batch_size % world:
            raise ConfigError(f"the batch size {self.batch_size} (train.batch_size, or a codec's batch_size) must divide evenly "
                              f"over {world} processes.")
        per = self.batch_size // world
        self.rank_slice = slice(self.acc.process_index * per, (self.acc.process_index + 1) * per)

        prior, self.layout, self.registries = None, None, registries
        if self.stage in ("prior", "joint"):
            self.layout = SequenceLayout.from_specs({r: codecs[r].latent_spec for r in cfg.codecs})
            torch.manual_seed(cfg.seed)
            prior = build_prior(cfg, self.layout, registries)
        self.fsdp = t.parallel == "fsdp"
        self.sharded = self.fsdp and world > 1  # one process: nothing to shard (checkpoints keep the sharded format)
        if self.sharded and self.role is not None and self.stage in ("codec", "joint"):
            # FSDP changes the module it shards for good: shard a copy, the caller's codec gets the trained weights after
            codecs = {**codecs, self.role: copy.deepcopy(codecs[self.role])}
        if t.compile and prior is not None:
            parallel.compile_prior(prior, sharded=self.sharded)
        self.module = StageLoss(self.stage, cfg, codecs, prior, self.layout, self.role, tasks or [], teacher)
        self.roots: list[nn.Module] = []  # FSDP roots (their gradient sync is switched off on accumulating micro-steps)
        if self.fsdp:
            self.module.to(self.acc.device)
            self.ema = self._new_ema()  # of the whole weights, then sharded like them: its update is a lerp of shards
            if self.sharded:
                self.roots = parallel.fsdp_shard(self.module.trainable, self.acc.device, self.precision)
                if self.ema is not None:
                    parallel.fsdp_shard(self.ema.module, self.acc.device, self.precision)
        # after sharding: under FSDP the optimizer holds the sharded parameters
        opt_cfg = t if self.stage in ("prior", "joint") else dataclasses.replace(t, optimizer="adamw")  # codecs: AdamW
        # Muon's iteration in bf16 where bf16 is what this run computes in (or on a GPU, as torch does), else in fp32:
        # a CPU that bf16 does not speed up multiplies the prior's matrices faster in fp32 (46 ms against 78)
        ns_dtype = torch.bfloat16 if self.precision == "bf16" or device != "cpu" else torch.float32
        self._opt = build_optimizer(self.module.trainable.named_parameters(), opt_cfg, self.lr, sharded=self.sharded,
                                    ns_dtype=ns_dtype)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self._opt, lambda s: lr_schedule(s, t.warmup_steps, self.steps, t.lr_schedule, t.cooldown))
        if self.fsdp:
            self.wrapped, self.optimizer = self.module, self.acc.prepare(self._opt)
        else:
            self.wrapped, self.optimizer = self.acc.prepare(self.module, self._opt)
            self.ema = self._new_ema()  # after prepare: the EMA copies the weights where prepare put them (the accelerator)
        self.start_step = 0
        self.resumed_from: Path | None = None
        if resume:
            self._resume()
        elif init_from is not None:
            self._init_from(Path(init_from))
        elif self.module.teacher is not None:  # distillation: the student starts as the teacher (its EMA weights)
            teacher_weights = {f"prior.{k}": v for k, v in self.module.teacher.state_dict().items()}
            self._load_weights(self._with_step_embedding(teacher_weights), Path(str(cfg.train.teacher)))

    def _new_ema(self) -> AveragedModel | None:
        t = self.cfg.train
        return AveragedModel(self.module.trainable, multi_avg_fn=ema_avg_fn(t.ema_decay, t.ema_warmup), use_buffers=True) \
            if t.ema_decay > 0 else None

    # ---- run directory -------------------------------------------------------------------------------

    @property
    def ckpt_root(self) -> Path:
        """Where this stage's checkpoints go: <run>/checkpoints, or a codec pre-stage's own <run>/stages/<role>/checkpoints."""
        return self._ckpt_root or self.run_dir / "checkpoints"

    def _prepare_run_dir(self, resume: bool) -> None:
        saved = self.run_dir / "config.yaml"
        if saved.exists():
            other = parse_yaml(saved.read_bytes(), str(saved)).get("name")
            if other != self.cfg.name:
                raise ConfigError(f"{self.run_dir} holds a run of experiment '{other}', not '{self.cfg.name}'. Pick another --run-dir.")
        if not resume and self.checkpoints and latest_checkpoint(self.ckpt_root) is not None:
            raise ConfigError(f"{self.run_dir} already has checkpoints. Pass --resume to continue that run, or pick another --run-dir "
                              "(nothing is overwritten).")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, saved)

    def _meta(self) -> dict[str, Any]:
        return {
            "experiment": self.cfg.name, "stage": self.stage, "latentbridge_version": __version__,
            "precision": self.precision,  # what train.mixed_precision resolved to on this machine (auto: where bf16 pays)
            "codecs": {r: {"codec": c.name, "provider": provider_of(type(c)), "fingerprint": c.fingerprint()}
                       for r, c in self.codecs.items() if r in self.module.frozen},
            "trainable_codecs": {r: {"codec": c.name, "provider": provider_of(type(c))}
                                 for r, c in self.codecs.items() if r not in self.module.frozen},
        }

    # ---- resume / init ---------------------------------------------------------------------------------

    def _resume(self) -> None:
        removed = clean_partial(self.ckpt_root) if self.acc.is_main_process else []
        path = latest_checkpoint(self.ckpt_root)
        if path is None:  # the run was stopped before this stage's first checkpoint: its earlier stages are kept
            if self.acc.is_main_process and self.progress:
                print(f"--resume: {self.ckpt_root} holds no checkpoint of the {self.stage} stage yet; it starts from step 0 "
                      "(finished codec stages are kept).", file=sys.stderr)
            return
        ckpt = load_checkpoint(path)
        self._check_compatible(ckpt, path)
        if ckpt["sharded"] is not None:  # written by an fsdp run (any process count): DCP reshards it to this one
            try:
                parallel.load_sharded(ckpt["sharded"], self.module.trainable, self._opt, self.ema)
            except Exception as err:  # noqa: BLE001 - DCP wraps every rank's failure in its own exception
                raise CheckpointError(f"{path}/sharded: cannot load the sharded training state into this run "
                                      f"({' '.join(str(err).split())[:400]}).") from None
        elif self.sharded:  # a full checkpoint (a ddp run) continued under fsdp: every process keeps its shards
            parallel.load_full(ckpt["model"], ckpt["optimizer"], self.module.trainable, self._opt, self.ema, ckpt["ema"])
        else:
            self._load_weights(ckpt["model"], path)
            if self.ema is not None and ckpt["ema"] is not None:
                self.ema.load_state_dict({k: v for k, v in ckpt["ema"].items()}, strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["state"]["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        self.start_step = ckpt["state"]["step"]
        data = ckpt["state"].get("data")
        if hasattr(self.batches, "load_state_dict") and data:
            self.batches.load_state_dict(data[min(self.acc.process_index, len(data) - 1)])
        self.resumed_from, self.removed_partial = path, removed

    def _check_compatible(self, ckpt: dict[str, Any], path: Path) -> None:
        old = parse_yaml(ckpt["config_yaml"], f"{path}/config.yaml")
        try:  # through the schema: keys a newer latentbridge added with their defaults (e.g. prior.backbone) are no change
            old = to_dict(from_dict(ExperimentConfig, old))
        except ConfigError:
            pass
        new = to_dict(self.cfg)
        if (_get(old, "train.optimizer") or "adamw") != _get(new, "train.optimizer"):
            raise CheckpointError(f"cannot resume {path}: its optimizer state is {_get(old, 'train.optimizer') or 'adamw'}'s, the "
                                  f"config now asks for train.optimizer {_get(new, 'train.optimizer')}. Resume with the original "
                                  "optimizer, or start a new run with --init-from for the weights.")
        changed = [k for k in ARCHITECTURE_KEYS if _get(old, k) != _get(new, k)]
        if changed:
            lines = "; ".join(f"{k}: checkpoint {_get(old, k)!r} vs now {_get(new, k)!r}" for k in changed)
            raise CheckpointError(f"cannot resume {path}: the config changes the architecture ({lines}). Resume with the "
                                  "original config, or start a new run with --init-from for the weights.")
        saved, now = ckpt["state"].get("codecs", {}), self._meta()["codecs"]
        if saved != now and self.stage != "codec":  # a codec stage uses no other codec
            differ = sorted(r for r in {*saved, *now} if saved.get(r) != now.get(r))
            what = "; ".join(f"{r}: checkpoint {json.dumps(saved.get(r), sort_keys=True)} vs now {json.dumps(now.get(r), sort_keys=True)}"
                             for r in differ)
            raise CheckpointError(f"cannot resume {path}: its codecs differ from the ones loaded now ({what}). Resume with the "
                                  "codecs this run trained with (its codecs/ directory), or start a new run.")

    def _load_weights(self, weights: dict[str, Tensor], path: Path) -> None:
        try:
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.module.trainable, weights, options=StateDictOptions(full_state_dict=True))
            else:
                self.module.trainable.load_state_dict(weights, strict=True)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: weights do not fit this model ({' '.join(str(err).split())[:400]}).") from None

    def _init_from(self, path: Path) -> None:
        if (path / "checkpoints").is_dir():
            path = latest_checkpoint(path / "checkpoints") or path
        ckpt = load_checkpoint(path, training_state=False)
        self._load_weights(self._with_step_embedding(dict(ckpt["model"])), path)

    def _with_step_embedding(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """A prior that can jump started from one that cannot: its step embedding keeps its zero start, as built (the
        shortcut or distill objective fine-tuning a flow prior computes the same velocities at its first step)."""
        mine = parallel.full_model_state(self.module.trainable)  # collective under FSDP
        return {**weights, **{k: v for k, v in mine.items() if ".step_embed." in k and k not in weights}}

    # ---- the loop -----------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, float]]:
        """Train from start_step to steps, logging and checkpointing; returns the logged rows of this call."""
        acc = self.acc
        if acc.is_main_process:
            self._prepare_run_dir(resume=self.resumed_from is not None)
            metrics = self.run_dir / "metrics.jsonl"
            rows = read_metrics_file(metrics)
            kept = [r for r in rows if (r.get("stage"), r.get("role")) != (self.stage, self._row_role) or r["step"] < self.start_step]  # a resume re-logs later steps
            tmp = metrics.with_name(".metrics.jsonl.tmp")  # replaced whole: a full disk cannot leave it half written
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, metrics)
            if acc.trackers:
                acc.init_trackers(self.cfg.name, config={k: str(v) for k, v in _flat(to_dict(self.cfg)).items()})
        acc.wait_for_everyone()
        rows: list[dict[str, float]] = []
        bar = tqdm(range(self.start_step, self.steps), initial=self.start_step, total=self.steps, desc=" ".join(filter(None, [self.stage, self._row_role])),
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        start = time.perf_counter()
        pause = float(os.environ.get(STEP_PAUSE_ENV, "0") or 0)
        self.wrapped.train()
        with StopSignals() as signals:
            self._loop(bar, signals, rows, start, pause)
        self.wrapped.eval()
        if acc.is_main_process:
            plot_losses(self.run_dir)
        for tracker in acc.trackers:  # not acc.end_training(): it would tear down the process group a later stage needs
            tracker.finish()
        return rows

    def _loop(self, bar: Any, signals: StopSignals, rows: list, start: float, pause: float) -> None:
        acc, t = self.acc, self.cfg.train
        for step in bar:
            self.optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in range(t.grad_accum):
                index = step * t.grad_accum + micro
                torch.manual_seed(self.cfg.seed * 7919 + index)  # codecs' own losses draw from the global RNG
                items = self.batches(index, self.batch_size, self.rank_slice)
                sync = micro == t.grad_accum - 1
                parallel.set_gradient_sync(self.roots, sync)
                with contextlib.nullcontext() if sync or self.fsdp else acc.no_sync(self.wrapped):
                    with acc.autocast():
                        terms = self.wrapped(items)
                    loss = terms["loss"]
                    if not torch.isfinite(loss.detach()):
                        last = latest_checkpoint(self.ckpt_root)
                        raise TrainingError(f"the {self.stage} loss became {loss.detach().item()} at step {step}; stopped before updating the "
                                            f"weights. Last good checkpoint: {last or 'none'}. Lower train.lr or check the data, then resume.")
                    acc.backward(loss / t.grad_accum)
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + v.detach().float() / t.grad_accum
            grad_norm = parallel.clip_grad_norm(self.module.trainable.parameters(), t.grad_clip) if self.fsdp else \
                acc.clip_grad_norm_(self.module.trainable.parameters(), t.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.module.trainable)
            done = step + 1
            if step % t.log_every == 0 or done == self.steps:
                values = {k: acc.reduce(v, reduction="mean").item() for k, v in totals.items()}
                if getattr(self.batches, "readers", None):  # streamed data: bad files skipped so far, over all processes
                    values["data_skipped"] = float(acc.reduce(torch.tensor(float(self.batches.skipped)), reduction="sum"))
                row = {"stage": self.stage, **({"role": self._row_role} if self._row_role else {}), "step": step, **values, "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "elapsed_s": round(time.perf_counter() - start, 3)}
                rows.append(row)
                if acc.is_main_process:
                    with (self.run_dir / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                    acc.log({k: v for k, v in row.items() if isinstance(v, float)}, step=step)
            wrote = self.checkpoints and t.checkpoint_every and (done % t.checkpoint_every == 0 or done == self.steps)
            if wrote:
                self.save(done)
            if pause:
                time.sleep(pause)
            stop = signals.agreed(acc.device)
            if stop:  # preemption or Ctrl-C: this step is done; keep it and stop
                if self.checkpoints and not wrote:
                    self.save(done)
                bar.close()
                what = " ".join(filter(None, [self.stage, self._row_role]))
                kept = (f"checkpoint {self.ckpt_root / step_name(done)} written; continue with the same command and --resume"
                        if self.checkpoints else "no checkpoint written (this trainer keeps none)")
                raise StoppedError(f"stopped by {signal.Signals(stop).name} after step {done} of {self.steps} of the {what} "
                                   f"stage: {kept}.", stop)

    @property
    def _row_role(self) -> str | None:
        """The codec a codec-stage trainer trains (its metrics rows say which: several codecs may train in one run)."""
        return self.role if self.stage == "codec" else None

    def _data_state(self) -> list[dict[str, Any]]:
        """Every process's position in its data streams (the feed's state), in process order."""
        mine = self.batches.state_dict() if hasattr(self.batches, "state_dict") else {}
        if _world() == 1:
            return [mine]
        every: list[Any] = [None] * _world()
        dist.all_gather_object(every, mine)
        return every

    def save(self, step: int) -> Path | None:
        if self.fsdp:
            return self._save_sharded(step)
        self.acc.wait_for_everyone()
        path = None
        data = self._data_state()
        if self.acc.is_main_process:
            state = {**self._meta(), "scheduler": self.scheduler.state_dict(), "data": data}
            path = save_checkpoint(self.ckpt_root, step, model=self.module.trainable.state_dict(),
                                   ema=self.ema.state_dict() if self.ema is not None else None,
                                   optimizer=self.optimizer.state_dict(), state=state, config_yaml=dump_yaml(self.cfg),
                                   keep=self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def _save_sharded(self, step: int) -> Path | None:
        """Every process writes its shards into the checkpoint's temporary directory (sharded/); the first process adds
        the full weights, EMA and state, and renames it into place (and moves `latest`) only after all of them finished."""
        acc, tmp = self.acc, temp_dir(self.ckpt_root, step)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            parallel.save_sharded(tmp / "sharded", self.module.trainable, self._opt, self.ema)
        except Exception as err:  # noqa: BLE001 - DCP gathers every process's failure into one exception
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(write_failure(self.ckpt_root, step, err)) from None
        model = parallel.full_model_state(self.module.trainable)  # collective: every process gathers
        ema = parallel.full_tensors(self.ema.state_dict()) if self.ema is not None else None
        data = self._data_state()
        path = None
        if acc.is_main_process:
            state = {**self._meta(), "scheduler": self.scheduler.state_dict(), "data": data, "parallel": "fsdp",
                     "processes": acc.num_processes}
            path = save_checkpoint(self.ckpt_root, step, model=model, ema=ema, optimizer=None, state=state,
                                   config_yaml=dump_yaml(self.cfg), keep=self.cfg.train.keep_checkpoints, tmp=tmp)
        acc.wait_for_everyone()
        return path

    def ema_weights(self) -> dict[str, Tensor]:
        """The EMA of the trainable weights (the raw weights when EMA is off), keyed like trainable.state_dict(); whole
        tensors on every process, also under FSDP (collective there)."""
        if self.ema is None:
            return parallel.full_model_state(self.module.trainable)
        return {k.removeprefix("module."): v for k, v in parallel.full_tensors(self.ema.state_dict()).items() if k != "n_averaged"}

    def export_prior(self, weights: dict[str, Tensor]) -> PriorBackbone:
        """A plain (unsharded, uncompiled) copy of the prior holding `weights` (trainable-keyed, e.g. ema_weights())."""
        if self.fsdp or self.cfg.train.compile:  # a sharded or compiled module is not copied: build the same backbone anew
            with torch.random.fork_rng():
                prior = build_prior(self.cfg, self.layout, self.registries).to(self.acc.device)
        else:
            prior = copy.deepcopy(self.module.trainable["prior"])
        prior.requires_grad_(False)
        for p in prior.parameters():
            p.grad = None
        prior.load_state_dict({k.removeprefix("prior."): v for k, v in weights.items() if k.startswith("prior.")}, strict=True)
        return prior.eval()


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
