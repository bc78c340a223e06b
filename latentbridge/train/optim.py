"""Optimizers and learning-rate schedules of a training stage.

    build_optimizer(named_params, train_cfg)   AdamW, or Muon on the transformer blocks' weight matrices with AdamW
                                               on everything else (train.optimizer)
    lr_schedule(step, warmup, total, kind)     the multiplier of the peak rate: linear warm-up, then cosine decay
                                               to zero, or warm-up, constant and a linear cool-down (wsd)

Muon (torch.optim.Muon) orthogonalizes each 2-D update by a Newton-Schulz iteration, so it only takes matrices; the
embeddings, the input and output projections, norms and biases stay with AdamW (the recipe of Muon's authors and of
Cola DLM's public training scripts). Its learning rate is matched to AdamW's update size (adjust_lr_fn
"match_rms_adamw", as in Moonlight), so one `train.lr` and one schedule drive both halves. `BatchedMuon` is
torch.optim.Muon's update with the Newton-Schulz iteration run once per shape on the stacked matrices (a prior's
blocks repeat each shape `depth` times): the same update in fewer, larger products.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from latentbridge.errors import ConfigError

LR_SCHEDULES = ("cosine", "wsd", "constant")


def lr_schedule(step: int, warmup: int, total: int, kind: str = "cosine", cooldown: float = 0.2) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total`: a linear warm-up over `warmup` steps, then
    `cosine` decay to zero, `wsd` (constant, then a linear cool-down to zero over the last `cooldown` share of the
    steps) or `constant`."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        start = max(warmup, total - round(cooldown * total))
        return 1.0 if step < start else max(0.0, (total - step) / max(1, total - start))
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ConfigError(f"train.lr_schedule: unknown schedule {kind!r}; use {', '.join(LR_SCHEDULES)}")


def muon_parameter(name: str, p: Tensor) -> bool:
    """Whether Muon updates this parameter: a weight matrix inside a transformer block (`blocks.` in its name)."""
    return p.ndim == 2 and ".blocks." in f".{name}"


def _evaluate(closure) -> Any:
    """The loss of an optimizer step's closure (None without one), computed with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _lr_ratio(kind: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's adjust_lr_fn: the factor on the learning rate of an A x B matrix's orthogonalized update."""
    a, b = shape[0], shape[1]
    if kind is None or kind == "original":
        return math.sqrt(max(1.0, a / b))
    if kind == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    if kind == "spectral_unclamped":
        return math.sqrt(a / b)
    return 1.0


def newton_schulz(g: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """The orthogonalized update of matrices g [..., A, B] (each its own), computed in `dtype` (bf16, as
    torch.optim.Muon does): each matrix scaled to unit Frobenius norm, then `steps` quintic Newton-Schulz iterations on
    the wide orientation."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a) if x.ndim == 3 else \
            torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon (its options, defaults and state: a momentum_buffer per matrix) whose step orthogonalizes all
    matrices of one shape together: one batched Newton-Schulz iteration per shape instead of one per matrix (the demo
    prior: 20 matrices of 5 shapes; `python benchmarks/prior_step.py` times both).

    `ns_dtype`: the precision of the iteration, bf16 as in torch (and on GPUs), or fp32 where bf16 products are no
    faster -- a CPU without bf16 autocast, where fp32 also took 46 ms against 78 for the demo prior's matrices."""

    def __init__(self, params, *args, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            lr, momentum, decay = float(group["lr"]), group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or torch.is_complex(p):
                    raise RuntimeError("Muon takes dense real matrices")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                by_shape.setdefault((tuple(p.shape), p.device, p.dtype), []).append((p, update))
            for (shape, _, _), pairs in by_shape.items():
                stacked = torch.stack([u for _, u in pairs]) if len(pairs) > 1 else pairs[0][1]
                ortho = newton_schulz(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                step_lr = lr * _lr_ratio(group["adjust_lr_fn"], torch.Size(shape))
                for j, (p, _) in enumerate(pairs):
                    p.mul_(1 - lr * decay)
                    p.add_(ortho[j] if len(pairs) > 1 else ortho, alpha=-step_lr)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (BatchedMuon) on some parameters and torch.optim.AdamW on the rest, as one optimizer: one list of parameter
    groups (a learning-rate scheduler scales both), one state (one state dict to checkpoint and resume)."""

    def __init__(self, muon_params: list[Tensor], adamw_params: list[Tensor], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, momentum: float = 0.95, ns_dtype: torch.dtype = torch.bfloat16) -> None:
        if not muon_params:
            raise ConfigError("train.optimizer muon: the model has no weight matrices in transformer blocks for Muon")
        self.muon = BatchedMuon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(adamw_params, lr=lr, betas=betas, weight_decay=weight_decay) if adamw_params else None
        super().__init__([*self.muon.param_groups, *(self.adamw.param_groups if self.adamw else [])], {})  # their own groups
        self._link()

    def _link(self) -> None:
        """The parts share this optimizer's groups and state (after __init__ and after load_state_dict)."""
        self.muon.param_groups = self.param_groups[:1]
        self.muon.state = self.state
        if self.adamw is not None:
            self.adamw.param_groups = self.param_groups[1:]
            self.adamw.state = self.state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "muon" in self.__dict__:
            self._link()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()
        return loss


def build_optimizer(named_params: Iterable[tuple[str, Tensor]], t: Any, lr: float, *, sharded: bool = False,
                    ns_dtype: torch.dtype = torch.bfloat16) -> torch.optim.Optimizer:
    """The optimizer of `train.optimizer` over the trainable parameters (t: the train config section); `ns_dtype`: the
    precision of Muon's Newton-Schulz iteration (BatchedMuon)."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if t.optimizer == "adamw":
        return torch.optim.AdamW([p for _, p in named], lr=lr, betas=t.betas, weight_decay=t.weight_decay)
    if t.optimizer == "muon":
        if sharded:
            raise ConfigError("train.optimizer muon does not run under FSDP with more than one process (Muon needs each "
                              "weight matrix whole); use train.parallel: ddp, or train.optimizer: adamw")
        muon = [p for n, p in named if muon_parameter(n, p)]
        rest = [p for n, p in named if not muon_parameter(n, p)]
        return MuonWithAdamW(muon, rest, lr=lr, betas=t.betas, weight_decay=t.weight_decay, momentum=t.muon_momentum,
                            ns_dtype=ns_dtype)
    raise ConfigError(f"train.optimizer: unknown optimizer {t.optimizer!r}; use adamw or muon")
