"""Loading a trained run directory: its config, its codecs and the EMA prior of its latest checkpoint.

This is the one way a run is read back (generation, evaluation, `latentbridge sample/eval/reconstruct`);
it builds through latentbridge.build exactly as training did, and never imports the trainer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from latentbridge.build import build_codecs, build_prior, layout_of
from latentbridge.codecs import Codec
from latentbridge.config import ExperimentConfig, load_config
from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.plugins import Registries, registries
from latentbridge.prior import PriorBackbone
from latentbridge.sequence import SequenceLayout
from latentbridge.checkpoint import latest_checkpoint, load_checkpoint
from latentbridge.typedconfig import from_dict


@dataclasses.dataclass
class Run:
    """A trained run as loaded: prior and layout are None for a codec-stage run."""

    directory: Path
    cfg: ExperimentConfig
    codecs: dict[str, Codec]
    prior: PriorBackbone | None
    layout: SequenceLayout | None
    registries: Registries


def read_config(run_dir: str | Path) -> ExperimentConfig:
    """The resolved config a run directory was trained with."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml). Pass a directory written by `latentbridge train`.")
    return load_config(run_dir / "config.yaml")


def _check_codecs(path: Path, saved: dict[str, Any], codecs: dict[str, Codec]) -> None:
    """The run's codecs must be the ones the checkpoint's prior was trained on (name and fingerprint, as --resume checks)."""
    wrong = []
    for role, want in saved.items():
        codec = codecs.get(role)
        now = {"codec": codec.name, "fingerprint": codec.fingerprint()} if codec is not None else None
        if now is None or now["codec"] != want.get("codec") or now["fingerprint"] != want.get("fingerprint"):
            wrong.append(f"{role}: checkpoint {want.get('codec')} {want.get('fingerprint')} vs run directory "
                         f"{now['codec'] + ' ' + now['fingerprint'] if now else 'none'}")
    if wrong:
        raise CheckpointError(f"{path}: the codecs in {path.parent.parent / 'codecs'} are not the ones its prior was trained "
                              f"with ({'; '.join(wrong)}). Restore the run's own codecs, or train a prior on these.")


def release_run(directory: str | Path, reg: Registries | None = None) -> Run | None:
    """A released model's directory opened as a run (no config.yaml, no checkpoint): the experiment that the first
    installed prior backbone recognising it gives (PriorBackbone.experiment_for), its codecs and prior built from their
    released weights. None when no backbone recognises the directory."""
    reg = reg or registries()
    for entry in reg.priors.entries():
        data = entry.cls.experiment_for(Path(directory))
        if data is None:
            continue
        return built_run(from_dict(ExperimentConfig, data, path=f"{entry.name} release"), Path(directory), reg)
    return None


def built_run(cfg: ExperimentConfig, directory: Path, reg: Registries | None = None) -> Run:
    """A run of an experiment whose codecs and prior bring their own weights (released models): built from the config
    alone, frozen, with no checkpoint read."""
    reg = reg or registries()
    codecs = {role: codec.freeze() for role, codec in build_codecs(cfg, reg).items()}
    layout = layout_of(cfg, codecs)
    return Run(Path(directory), cfg, codecs, build_prior(cfg, layout, reg).eval(), layout, reg)


def load_run(run_dir: str | Path, reg: Registries | None = None, *, need_prior: bool = True) -> Run:
    """Config, frozen codecs and EMA prior of a trained run directory (its latest checkpoint), or a released model's
    directory that an installed prior backbone recognises (release_run)."""
    run_dir = Path(run_dir)
    reg = reg or registries()
    if not (run_dir / "config.yaml").is_file() and run_dir.is_dir():
        release = release_run(run_dir, reg)
        if release is not None:
            return release
    cfg = read_config(run_dir)
    joint = cfg.train.codec_role or cfg.task.target if cfg.train.stage == "joint" else None
    dirs = {role: run_dir / "codecs" / role for role in cfg.codecs}
    if joint and not (dirs[joint] / "codec.json").is_file():  # an unfinished joint run: stage 1 + the checkpoint's weights
        dirs[joint] = run_dir / "stage1" / joint
    missing = [role for role, d in dirs.items() if not (d / "codec.json").is_file()]
    if missing:
        raise ConfigError(f"{run_dir} has no trained codec for role(s) {', '.join(missing)} (codecs/<role>/ is missing); "
                          "finish its training first (latentbridge train ... --resume).")
    codecs = {role: reg.codecs.load(d).freeze() for role, d in dirs.items()}
    if cfg.train.stage == "codec":
        if need_prior:
            raise ConfigError(f"{run_dir} is a codec-stage run: it has no prior to sample from. Train a prior on its codec "
                              f"(codecs.<role>.pretrained: {run_dir}/codecs/<role>) and sample that run.")
        return Run(run_dir, cfg, codecs, None, None, reg)
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        if cfg.prior.backbone != "dit":  # a backbone that imports released weights samples before any training
            layout = layout_of(cfg, codecs)
            prior = build_prior(cfg, layout, reg)
            if prior.ships_weights:
                return Run(run_dir, cfg, codecs, prior.eval(), layout, reg)
        raise ConfigError(f"{run_dir} has no checkpoint to sample from; train it first (latentbridge train).")
    ckpt = load_checkpoint(path, training_state=False)  # inference never reads the optimizer state
    _check_codecs(path, ckpt["state"].get("codecs", {}), codecs)
    weights: dict[str, Any] = ckpt["ema"] or ckpt["model"]
    weights = {k.removeprefix("module."): v for k, v in weights.items() if k != "n_averaged"}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}); sample from an earlier checkpoint (write its name into "
                              f"{path.parent / 'latest'}) or retrain.")
    if joint:  # the joint stage trains its codec with the prior: the checkpoint's codec is the one its prior knows
        try:
            codecs[joint].load_state_dict({k.removeprefix("codec."): v for k, v in weights.items() if k.startswith("codec.")}, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: the {joint} codec's weights do not fit the run's codec ({' '.join(str(err).split())[:300]}).") from None
        codecs[joint].freeze()
    layout = layout_of(cfg, codecs)
    prior = build_prior(cfg, layout, reg)
    try:
        prior.load_state_dict({k.removeprefix("prior."): v for k, v in weights.items() if k.startswith("prior.")}, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: prior weights do not fit the run's config ({' '.join(str(err).split())[:300]}).") from None
    return Run(run_dir, cfg, codecs, prior.eval(), layout, reg)
