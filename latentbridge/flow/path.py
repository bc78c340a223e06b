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


def flow_matching_sums(pred: Tensor, target: Tensor, mask: Tensor, channel_mask: Tensor | None = None,
                       token_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sum of squared errors over the masked tokens (and valid channels), and how many entries it sums (fp32).

    pred, target: [B, L, D]; mask: [B, L] bool (noisy target tokens); channel_mask: [B, L, D] bool
    where codecs of different widths share one padded channel axis; token_weight: [B, L] scales each token's
    squared errors (not the count: a weight of 2 counts a token's errors twice).
    """
    weight = mask.unsqueeze(-1).float()  # [B, L, 1]
    if channel_mask is not None:
        weight = weight * channel_mask.float()
    sq = (pred.float() - target.float()).pow(2) * weight
    count = weight.expand_as(sq).sum()
    if token_weight is not None:
        sq = sq * token_weight.float().unsqueeze(-1)
    return sq.sum(), count


def flow_matching_loss(pred: Tensor, target: Tensor, mask: Tensor, channel_mask: Tensor | None = None) -> Tensor:
    """Mean squared error over the masked tokens (and valid channels); see flow_matching_sums."""
    total, count = flow_matching_sums(pred, target, mask, channel_mask)
    return total / count.clamp_min(1.0)
