"""Stopping a training run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C), at the same step on every process."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist


class StopSignals:
    """While training: SIGTERM (preemption) or SIGINT (Ctrl-C) is noted, the step in progress finishes, a checkpoint is
    written and training stops with StoppedError. A second signal acts at once, as it would without this."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> StopSignals:
        self.received = 0
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.received:  # a second signal: what it would do without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def agreed(self, device: torch.device) -> int:
        """The signal any process received (0: none); every process of a run stops at the same step."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received
        flag = torch.tensor([self.received], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)
