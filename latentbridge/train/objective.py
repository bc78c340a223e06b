"""The prior's training objective: pack examples in the two-copy layout, noise one t per block, regress the velocity.

This is where sequence layout, flow matching and the network meet (ARCHITECTURE.md §2: only
train/, pipeline.py and evaluate/ wire the pieces).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from latentbridge.flow import TimeSampler, flow_matching_loss, interpolate, velocity_target
from latentbridge.prior import BlockCausalDiT
from latentbridge.sequence import Example, PackedBatch, SequenceLayout, block_groups, drop_conditions, pack


def sample_block_times(packed: PackedBatch, layout: SequenceLayout, samplers: Mapping[str, TimeSampler],
                       generator: torch.Generator | None = None) -> Tensor:
    """Flow time per token [B, L]: one draw per noisy block from its codec's sampler; 0 for clean tokens."""
    group, group_codec = block_groups(packed)
    times = torch.zeros(group_codec.shape[0], dtype=packed.values.dtype)
    for name, cid in layout.ids.items():
        sel = (group_codec == cid).cpu()
        if bool(sel.any()):
            times[sel] = samplers[name].sample(int(sel.sum()), generator).to(times.dtype)
    times = times.to(packed.values.device)
    return torch.where(group >= 0, times[group.clamp_min(0)], torch.zeros((), dtype=times.dtype, device=times.device))


def prior_loss(
    prior: BlockCausalDiT,
    layout: SequenceLayout,
    examples: Sequence[Example],
    samplers: Mapping[str, TimeSampler],
    *,
    cond_dropout: float = 0.0,
    row_length: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Flow-matching loss on the noisy copies: {"loss": total, "loss/<codec>": per codec stream}."""
    examples = drop_conditions(examples, cond_dropout, generator)
    packed = pack(examples, layout, two_copies=True, row_length=row_length)
    z0 = packed.values  # [B, L, Dmax]
    t = sample_block_times(packed, layout, samplers, generator)  # [B, L]
    eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device) * packed.channel_mask
    noisy = packed.meta.noisy[..., None]
    x = torch.where(noisy, interpolate(z0, eps, t), z0)
    target = velocity_target(z0, eps)
    pred = prior(x, t, packed.codec, packed.meta)
    mask = packed.loss_mask
    out = {"loss": flow_matching_loss(pred, target, mask, packed.channel_mask)}
    if len(layout.names) > 1:
        with torch.no_grad():
            for name, cid in layout.ids.items():
                m = mask & (packed.codec == cid)
                if bool(m.any()):
                    out[f"loss/{name}"] = flow_matching_loss(pred, target, m, packed.channel_mask)
    return out
