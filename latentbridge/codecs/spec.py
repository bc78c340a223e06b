"""What a codec promises about its latents: LatentSpec, LatentStats, Posterior, Latents.

Dimensions:
    B  items in a batch
    N  latent tokens per item (padded to the longest item of the batch)
    D  latent channels (`LatentSpec.dim`)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """Shape of a codec's latents as the prior sees them."""

    dim: int
    """Latent channels per token (D)."""
    block_size: int
    """Latent tokens per prior block: text e.g. 16, an image all its tokens, audio a fixed span."""
    tokens_per_item: int | None = None
    """Latent tokens of every item when fixed; None when the count depends on the item (Codec.num_tokens)."""
    end: Literal["length", "marker"] = "length"
    """How generation knows an item is complete: after a known length, or when the decoder sees an end marker."""
    max_tokens: int | None = None
    """Upper bound on tokens per item for variable-length codecs (None: unbounded)."""

    def __post_init__(self) -> None:
        for name in ("dim", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LatentSpec.{name} must be a positive int, got {value!r}")
        if self.tokens_per_item is not None and (
            not isinstance(self.tokens_per_item, int) or self.tokens_per_item < 1
        ):
            raise ValueError(f"LatentSpec.tokens_per_item must be a positive int or None, got {self.tokens_per_item!r}")
        if self.end not in ("length", "marker"):
            raise ValueError(f"LatentSpec.end must be 'length' or 'marker', got {self.end!r}")
        if self.max_tokens is not None and self.tokens_per_item is not None and self.max_tokens != self.tokens_per_item:
            raise ValueError("LatentSpec.max_tokens only applies to variable-length codecs (tokens_per_item=None)")

    @property
    def fixed(self) -> bool:
        """True when every item has `tokens_per_item` latents."""
        return self.tokens_per_item is not None

    def num_blocks(self, num_tokens: int) -> int:
        """Prior blocks an item of `num_tokens` latents occupies (the last one may be partial)."""
        return -(-num_tokens // self.block_size)


class LatentStats(nn.Module):
    """Per-channel shift and scale that make a codec's latents roughly zero-mean, unit-variance.

    The codec owns them (they live in its state dict) and applies them inside encode/decode, so no
    scale literal appears anywhere else (STYLE.md rule 2).
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))  # [D]
        self.register_buffer("scale", torch.ones(dim))  # [D]

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents [..., D] -> normalized latents [..., D]."""
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalized latents [..., D] -> raw latents [..., D]."""
        return z * self.scale.to(z.dtype) + self.shift.to(z.dtype)

    @torch.no_grad()
    def set(self, shift: Tensor, scale: Tensor) -> None:
        """Replace the stats, checking shape, sign and finiteness."""
        shift = torch.as_tensor(shift, dtype=self.shift.dtype, device=self.shift.device)
        scale = torch.as_tensor(scale, dtype=self.scale.dtype, device=self.scale.device)
        if shift.shape != self.shift.shape or scale.shape != self.scale.shape:
            raise ValueError(
                f"LatentStats.set: expected shift and scale of shape {tuple(self.shift.shape)}, "
                f"got {tuple(shift.shape)} and {tuple(scale.shape)}"
            )
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("LatentStats.set: shift must be finite and scale finite and > 0")
        self.shift.copy_(shift)
        self.scale.copy_(scale)

    @torch.no_grad()
    def fit(self, z: Tensor, min_scale: float = 1e-4) -> None:
        """Set the stats from raw latent tokens z [M, D] (valid tokens only)."""
        if z.ndim != 2 or z.shape[0] < 2:
            raise ValueError(f"LatentStats.fit needs at least 2 latent tokens as [M, D], got {tuple(z.shape)}")
        z = z.double()
        self.set(z.mean(0), z.std(0).clamp_min(min_scale))


@dataclasses.dataclass
class Posterior:
    """What a codec's raw encoder returns: a diagonal Gaussian q(z|x) per latent token (raw units)."""

    mean: Tensor
    """[B, N, D] posterior means; positions past an item's length are ignored."""
    lengths: Tensor
    """[B] int64 valid latent tokens per item."""
    logvar: Tensor | None = None
    """[B, N, D] log-variances, or None for a deterministic encoder."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample z = mean + exp(logvar / 2) * noise, [B, N, D]."""
        if self.logvar is None:
            return self.mean
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mask(self) -> Tensor:
        """[B, N] True at valid latent tokens."""
        return length_mask(self.lengths, self.mean.shape[1])

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) per latent token, summed over channels: [B, N], zero at padding."""
        logvar = self.logvar if self.logvar is not None else torch.zeros_like(self.mean)
        kl = 0.5 * (self.mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # [B, N]
        return kl * self.mask().to(kl.dtype)

    def kl_to(self, other: Posterior) -> Tensor:
        """KL(self || other) between diagonal Gaussians per latent token, summed over channels: [B, N]."""
        lv = self.logvar if self.logvar is not None else torch.zeros_like(self.mean)
        lv0 = other.logvar if other.logvar is not None else torch.zeros_like(other.mean)
        kl = 0.5 * (lv0 - lv + (lv.exp() + (self.mean - other.mean).pow(2)) / lv0.exp() - 1.0).sum(-1)
        return kl * self.mask().to(kl.dtype)


@dataclasses.dataclass
class Latents:
    """Normalized latents of a batch of items, as the prior consumes and produces them."""

    codec: str
    """Name of the codec that made them (and must decode them)."""
    values: Tensor
    """[B, N, D] normalized latents, zero past each item's length."""
    lengths: Tensor
    """[B] int64 valid latent tokens per item."""

    @property
    def mask(self) -> Tensor:
        """[B, N] True at valid latent tokens."""
        return length_mask(self.lengths, self.values.shape[1])

    def __len__(self) -> int:
        return self.values.shape[0]

    def unbind(self) -> list[Tensor]:
        """Per-item latents without padding: a list of B tensors [n_i, D]."""
        return [v[: int(n)] for v, n in zip(self.values, self.lengths)]

    @classmethod
    def from_list(cls, codec: str, items: list[Tensor]) -> Latents:
        """Pad a list of [n_i, D] tensors into one batch."""
        if not items:
            raise ValueError("Latents.from_list needs at least one item")
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long, device=items[0].device)
        values = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)  # [B, N, D]
        return cls(codec, values, lengths)

    def to(self, *args, **kwargs) -> Latents:
        """Move values (and lengths, device only) like Tensor.to."""
        values = self.values.to(*args, **kwargs)
        return Latents(self.codec, values, self.lengths.to(values.device))


def length_mask(lengths: Tensor, n: int) -> Tensor:
    """[B] lengths -> [B, n] boolean mask of valid positions."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]
