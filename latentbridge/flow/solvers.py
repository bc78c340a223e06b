"""Fixed-grid ODE solvers that carry noise (t = 1) to data (t = 0) along a velocity field.

A velocity function is `v(x, t) -> dx/dt` with x [..., D] and t a 0-dim tensor; nothing else. The `shortcut`
solver calls `v(x, t, span)` instead: the velocity averaged over the step [t - span, t] (a shortcut model).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]


def time_grid(steps: int, shift: float = 1.0, *, device=None, dtype=torch.float32) -> Tensor:
    """[steps + 1] times from 1 to 0. shift > 1 spends more steps near the noise end (SD3's t' = s t / (1 + (s - 1) t))."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return t.to(dtype)


def euler_step(v: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """First order: one velocity evaluation."""
    return x + (t_next - t) * v(x, t)


def midpoint_step(v: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Second order: velocity at the midpoint of the step."""
    h = t_next - t
    return x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)


def heun_step(v: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Second order: trapezoid of the velocities at both ends (an Euler predictor, then a corrector)."""
    h = t_next - t
    d1 = v(x, t)
    d2 = v(x + h * d1, t_next)
    return x + 0.5 * h * (d1 + d2)


def shortcut_step(v: Callable[..., Tensor], x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One jump with the velocity averaged over the step (exact for a perfect shortcut model, whatever its size)."""
    return x + (t_next - t) * v(x, t, t - t_next)


SOLVERS: dict[str, Callable[[Velocity, Tensor, Tensor, Tensor], Tensor]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "heun": heun_step,
    "shortcut": shortcut_step,
}
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "shortcut": 1}


def integrate(
    velocity: Velocity,
    x: Tensor,
    *,
    steps: int = 16,
    solver: str = "euler",
    shift: float = 1.0,
    grid: Tensor | None = None,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = grid[0] (default 1, noise) to grid[-1] (default 0)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    step = SOLVERS[solver]
    grid = time_grid(steps, shift, device=x.device, dtype=x.dtype) if grid is None else grid.to(x)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = step(velocity, x, t, t_next)
    return x
