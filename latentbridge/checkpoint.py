"""Self-describing training checkpoints: one directory per step, written atomically, loaded strictly.

    checkpoints/step_0000500/
        model.safetensors      trainable weights (prior.* and/or codec.*)
        ema.safetensors        EMA of those weights (when enabled)
        optimizer.pt           optimizer state (tensors and numbers only; loaded with weights_only=True)
        sharded/               instead of optimizer.pt under train.parallel=fsdp: every process's shards of the
                               weights, optimizer state and EMA (torch.distributed.checkpoint), which resume reads
        state.json             step, scheduler state, experiment, stage, codecs (name, provider, fingerprint), versions
        rng.safetensors        torch's CPU RNG state
        config.yaml            the resolved config of the run
    checkpoints/latest         name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place, then `latest` is
replaced atomically: a process killed mid-write leaves the previous checkpoint intact. A sharded checkpoint's
processes all write into that directory first; it is renamed only after every one of them finished.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentbridge.errors import CheckpointError

LATEST = "latest"
PAUSE_ENV = "LATENTBRIDGE_CHECKPOINT_PAUSE_S"  # fault injection for tests: sleep mid-write


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def _state_dict_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any],
    config_yaml: str,
    keep: int,
    tmp: Path | None = None,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, and keep only the newest `keep`.

    A write that fails (full disk, read-only filesystem) removes its partial files and raises a CheckpointError
    naming the directory, the free space and the checkpoint `latest` still names.

    `tmp`: a temporary directory already holding the processes' `sharded/` state (then `optimizer` is None)."""
    given = tmp is not None
    tmp = tmp if given else temp_dir(ckpt_root, step, os.getpid())
    try:
        return _write(ckpt_root, step, tmp, given, model=model, ema=ema, optimizer=optimizer, state=state, config_yaml=config_yaml,
                      keep=keep)
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(write_failure(ckpt_root, step, err)) from None


def write_failure(ckpt_root: Path, step: int, err: BaseException) -> str:
    import errno

    probe = Path(ckpt_root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    code = getattr(err, "errno", None)
    text = " ".join(str(err).split())
    # torch.save on a full disk says only "... unexpected pos ..."; safetensors wraps the OS error in its own text
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "StorageFull" in text or \
        (free is not None and free < 64 << 20 and "unexpected pos" in text)
    latest = latest_checkpoint(ckpt_root) if probe == Path(ckpt_root) else None
    kept = f"{ckpt_root / LATEST} still names {latest.name}" if latest else "no earlier checkpoint exists"
    where = f"{free / 2**20:,.1f} MiB free there" if free is not None else "free space unknown"
    if full:
        why, fix = f"no space left on the device ({where})", "Free some space, then continue with --resume"
    elif code == errno.EROFS:
        why, fix = "the filesystem is read-only", "Make it writable (or copy the run elsewhere), then continue with --resume"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = "no permission to write there", "Fix the directory's permissions, then continue with --resume"
    else:
        why, fix = f"{type(err).__name__}: {text[:200]}", "Check the disk, then continue with --resume"
    return f"could not write checkpoint {step_name(step)} into {ckpt_root}: {why}. {kept}. {fix}."


def temp_dir(ckpt_root: Path, step: int, tag: int | str = "sharded") -> Path:
    """The temporary directory checkpoint `step` is written into (every process of a sharded save names the same)."""
    return Path(ckpt_root) / f".tmp-{step_name(step)}-{tag}"


def _write(ckpt_root: Path, step: int, tmp: Path, given: bool, *, model: dict[str, torch.Tensor],
           ema: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None, state: dict[str, Any], config_yaml: str,
           keep: int) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_name(step)
    if not given:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    save_file(_state_dict_tensors(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_state_dict_tensors(ema), str(tmp / "ema.safetensors"))
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause:
        time.sleep(pause)
    if optimizer is not None:
        torch.save(optimizer, tmp / "optimizer.pt")
    save_file({"torch_cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = ckpt_root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, ckpt_root / LATEST)
    for old in complete_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first."""
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def clean_partial(ckpt_root: Path) -> list[str]:
    """Remove temporary directories left by a process killed while writing; return their names."""
    removed = []
    for p in ckpt_root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint `latest` names (falling back to the newest complete one if the pointer is missing)."""
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        path = ckpt_root / name
        if path.resolve().parent != Path(ckpt_root).resolve():
            raise CheckpointError(f"{pointer} names {name!r}, which is not one of this run's checkpoints ({ckpt_root}/step_*). "
                                  f"Write the name of one of them into {pointer} (e.g. the newest: step_NNNNNNN).")
        if (path / "state.json").is_file():
            return path
    done = complete_checkpoints(ckpt_root)
    return done[-1] if done else None


def load_checkpoint(path: Path, training_state: bool = True) -> dict[str, Any]:
    """Read a checkpoint directory; a missing or damaged file is a CheckpointError naming it.

    With `training_state` False (generation, evaluation) the optimizer state and RNG are not read at all."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (state.json is missing).")
    out: dict[str, Any] = {}
    try:
        out["state"] = json.loads((path / "state.json").read_text())
        out["model"] = load_file(str(path / "model.safetensors"))
        out["ema"] = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").exists() else None
        sharded = path / "sharded"
        out["sharded"] = sharded if sharded.is_dir() else None
        if sharded.is_dir() and not (sharded / ".metadata").is_file():
            raise OSError(f"{sharded}/.metadata is missing")
        if training_state:
            out["rng"] = load_file(str(path / "rng.safetensors"))["torch_cpu"]
            out["optimizer"] = None if out["sharded"] else torch.load(path / "optimizer.pt", weights_only=True)
        out["config_yaml"] = (path / "config.yaml").read_text()
    except (OSError, json.JSONDecodeError, SafetensorError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:
        older = [p.name for p in complete_checkpoints(path.parent) if p.name < path.name]
        hint = f" An older checkpoint exists ({older[-1]}): point {path.parent / LATEST} at it to resume from there." if older else ""
        detail = (str(err).strip().splitlines() or [""])[0][:200]  # one line: torch's unpickling errors run to paragraphs
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {detail}).{hint}") from None
    return out
