"""Guarding a run directory: one trainer at a time, and nothing written before the run is known new or resumed.

    with RunLock(run_dir):               # a second trainer is refused at once, naming the holder
        check_run_dir(run_dir, resume)   # a run directory that holds work needs --resume; --resume needs a run

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

from latentbridge.errors import ConfigError, LatentbridgeError
from latentbridge.train.checkpoint import latest_checkpoint


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


def existing_work(run_dir: Path) -> list[str]:
    """What a run directory holds that a new training would overwrite."""
    found = []
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        found.append("checkpoints")
    codecs = sorted(p.parent.name for p in (run_dir / "codecs").glob("*/codec.json"))
    if codecs:
        found.append(f"trained codecs ({', '.join(codecs)})")
    if any((run_dir / "stage1").glob("*/codec.json")):
        found.append("a joint run's stage-1 codec")
    return found


def check_run_dir(run_dir: str | Path, resume: bool, name: str) -> None:
    """Refuse, before anything is written or trained: a run directory of another experiment, a new training into a
    run directory holding work, or --resume of a directory that holds no run."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        import yaml

        try:
            other = (yaml.safe_load(saved.read_text()) or {}).get("name")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
            other = "(unreadable config.yaml)"
        if other != name:
            raise ConfigError(f"{run_dir} holds a run of experiment '{other}', not '{name}'. Pick another --run-dir.")
    if not resume:
        work = existing_work(run_dir)
        if work:
            raise ConfigError(f"{run_dir} already holds a run ({', '.join(work)}). Pass --resume to continue it, or pick "
                              "another --run-dir; nothing was written.")
    elif not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {run_dir} holds no run to continue (no config.yaml). Start the run without --resume.")
