"""Classifier-free guidance with one scale per condition (Ho & Salimans 2022; compositional form).

With v_full the velocity given every condition and v_without[i] the velocity with condition i
dropped, the guided velocity is

    v = v_full + sum_i (s_i - 1) (v_full - v_without[i])

which for one condition is the familiar v_uncond + s (v_cond - v_uncond). Outside the optional
t-interval guidance is off (v = v_full), as in Kynkaanniemi et al. 2024.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor


def guided_velocity(
    v_full: Tensor,
    v_without: Sequence[Tensor],
    scales: Sequence[float],
    t: float | Tensor,
    interval: tuple[float, float] | None = None,
) -> Tensor:
    """Combine conditional and condition-dropped velocities; shapes all [..., D]."""
    if len(v_without) != len(scales):
        raise ValueError(f"one guidance scale per condition: {len(scales)} scales for {len(v_without)} conditions")
    if interval is not None and not (interval[0] <= float(t) <= interval[1]):
        return v_full
    out = v_full
    for v_i, s_i in zip(v_without, scales):
        if s_i != 1.0:
            out = out + (s_i - 1.0) * (v_full - v_i)
    return out
