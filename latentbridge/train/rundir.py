"""Guarding a run directory: one trainer at a time, and nothing written before the run is known new or resumed.

    with RunLock(run_dir):               # a second trainer is refused at once, naming the holder
        check_run_dir(run_dir, resume, cfg)   # a run directory holding work needs --resume; --resume needs a run of
                                              # the same config (only RESUME_MAY_CHANGE keys may differ)

The lock is an OS file lock (PyPI `filelock`) on <run>/.lock, held by the training's main process (rank 0 under
torchrun) for the whole run, codec pre-stages included; <run>/.lock.json says who holds it (pid, host, start time,
command). The OS releases the lock when its process dies, so a lock left by a killed trainer is taken over, with
a note naming the process that left it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from typing import Any

from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError, LatentbridgeError
from latentbridge.checkpoint import latest_checkpoint
from latentbridge.typedconfig import from_dict, parse_yaml, to_dict


class RunLockedError(LatentbridgeError):
    """Another process trains into this run directory."""


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RunLock:
    """Hold <run_dir>/.lock while training (a no-op in processes other than rank 0)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.lock = None

    @property
    def info_file(self) -> Path:
        return self.run_dir / ".lock.json"

    def __enter__(self) -> RunLock:
        if not _main_process():
            return self
        from filelock import FileLock, Timeout

        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / ".lock"))
        try:
            # a holder that died may leave forked children (loader workers) holding the lock for a moment: wait for them
            lock.acquire(timeout=0 if self._holder_alive() else 20)
        except Timeout:
            holder = self._holder()
            raise RunLockedError(f"{self.run_dir} is being trained by another process ({holder}). Wait for it to end, or "
                                 "pick another --run-dir.") from None
        left = self._holder() if self.info_file.exists() else None
        if left is not None:
            warnings.warn(f"{self.run_dir}: taking over the lock left by a process that ended without releasing it ({left})",
                          stacklevel=2)
        self.lock = lock
        self.info_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              "command": " ".join(sys.argv)[:300]}) + "\n")
        return self

    def _holder_alive(self) -> bool:
        try:
            pid = int(json.loads(self.info_file.read_text())["pid"])
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except (OSError, ValueError, KeyError):
            return True  # no record, or not ours to signal: treat as alive

    def _holder(self) -> str:
        try:
            info = json.loads(self.info_file.read_text())
            return f"pid {info['pid']} on {info['host']}, since {info['started']}: {info['command']}"
        except (OSError, ValueError, KeyError):
            return "no details recorded"

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.info_file.unlink(missing_ok=True)
            self.lock.release()
            self.lock = None


# What --resume may change: how long to train, how often to log and checkpoint, and what happens after training.
# Everything else changes what the finished steps mean (a new run, or --init-from, is the way to change it).
RESUME_MAY_CHANGE = ("train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.parallel",
                     "train.compile", "sampling", "eval")  # parallel: a checkpoint of either kind resumes under the other


def existing_work(run_dir: Path) -> list[str]:
    """What a run directory holds that a new training would overwrite."""
    found = []
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        found.append("checkpoints")
    codecs = sorted(p.parent.name for p in (run_dir / "codecs").glob("*/codec.json"))
    if codecs:
        found.append(f"trained codecs ({', '.join(codecs)})")
    started = sorted(p.parent.parent.name for p in (run_dir / "stages").glob("*/checkpoints")
                     if latest_checkpoint(p) is not None)
    if started:
        found.append(f"codec pre-stage checkpoints ({', '.join(started)})")
    if any((run_dir / "stage1").glob("*/codec.json")):
        found.append("a joint run's stage-1 codec")
    return found


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data configs (sections compared key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if old != new else []


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def check_run_dir(run_dir: str | Path, resume: bool, cfg: ExperimentConfig) -> None:
    """Refuse, before anything is written or trained: a run directory of another experiment, a new training into a
    run directory holding work, --resume of a directory that holds no run, or --resume with a config that changes
    more than RESUME_MAY_CHANGE."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    old: dict[str, Any] | None = None
    if saved.is_file():
        try:
            old = parse_yaml(saved.read_bytes(), str(saved))
        except (ConfigError, OSError):
            old = None
        other = old.get("name") if old is not None else "(unreadable config.yaml)"
        if other != cfg.name:
            raise ConfigError(f"{run_dir} holds a run of experiment '{other}', not '{cfg.name}'. Pick another --run-dir.")
    if not resume:
        work = existing_work(run_dir)
        if work:
            raise ConfigError(f"{run_dir} already holds a run ({', '.join(work)}). Pass --resume to continue it, or pick "
                              "another --run-dir; nothing was written.")
        return
    if old is None:
        raise ConfigError(f"--resume: {run_dir} holds no run to continue (no config.yaml). Start the run without --resume.")
    new = to_dict(cfg)
    try:  # through the schema, so keys a newer latentbridge added with their defaults are no change
        old = to_dict(from_dict(ExperimentConfig, old))
    except ConfigError:
        pass
    changed = [k for k in config_changes(old, new) if not _may_change(k)]
    if changed:
        shown = "; ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ConfigError(f"--resume: the config differs from the run's {saved} in {shown}{more}. Resume with the run's "
                          f"config (only {', '.join(RESUME_MAY_CHANGE)} may change), or start a new --run-dir "
                          "(--init-from RUN starts from its weights).")


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
