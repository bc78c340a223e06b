"""The straight probability path and its flow-matching loss (rectified flow; Cola DLM, Prior)."""

from __future__ import annotations

from torch import Tensor


def interpolate(z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """z_t = (1 - t) z0 + t eps. z0, eps: [..., D]; t: [...] (one time per token)."""
    t = t.unsqueeze(-1).to(z0.dtype)
    return (1 - t) * z0 + t * eps


def velocity_target(z0: Tensor, eps: Tensor) -> Tensor:
    """dz_t/dt = eps - z0, the regression target of the network."""
    return eps - z0


def flow_matching_loss(pred: Tensor, target: Tensor, mask: Tensor, channel_mask: Tensor | None = None) -> Tensor:
    """Mean squared error over the masked tokens (and valid channels).

    pred, target: [B, L, D]; mask: [B, L] bool (noisy target tokens); channel_mask: [B, L, D] bool
    where codecs of different widths share one padded channel axis.
    """
    weight = mask.unsqueeze(-1).to(pred.dtype)  # [B, L, 1]
    if channel_mask is not None:
        weight = weight * channel_mask.to(pred.dtype)
    sq = (pred.float() - target.float()).pow(2) * weight
    return sq.sum() / weight.expand_as(sq).sum().clamp_min(1.0)
