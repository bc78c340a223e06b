"""The built-in `identity` codec: items that already are latent vectors ([n, D] tensors).

Use it to bring latents made elsewhere (features from another model, simulated data) into the
prior, and as the hermetic fixture of latentbridge's own tests. It has nothing to train; its stats
can still be fitted so the prior sees roughly unit-variance inputs.

Dimensions: B items, N tokens (padded), D channels.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from latentbridge.codecs.base import Codec
from latentbridge.codecs.spec import LatentSpec, Posterior
from latentbridge.errors import CodecOutputError


@dataclasses.dataclass
class IdentityConfig:
    """Options of the identity codec."""

    dim: int = 8
    """Channels of each latent vector (D)."""
    block_size: int = 4
    """Latent vectors per prior block."""
    tokens_per_item: int | None = None
    """Vectors per item when every item has the same count; None for variable-length items."""
    max_tokens: int = 64
    """Most vectors one variable-length item may hold."""


class IdentityCodec(Codec):
    """Latent vectors in, the same vectors out (up to the codec's stats)."""

    name = "identity"
    modality = "latent"
    config_class = IdentityConfig
    trainable = False

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        return LatentSpec(
            dim=c.dim,
            block_size=c.block_size,
            tokens_per_item=c.tokens_per_item,
            max_tokens=None if c.tokens_per_item else c.max_tokens,
        )

    def num_tokens(self, item: Tensor) -> int:
        return int(item.shape[0])

    def collate(self, items: Sequence[Tensor]) -> dict[str, Tensor]:
        for i, x in enumerate(items):
            x = torch.as_tensor(x)
            if x.ndim != 2 or x.shape[1] != self.config.dim or x.shape[0] < 1:
                raise CodecOutputError(
                    f"codec 'identity': item {i} has shape {tuple(x.shape)}; expected [n, {self.config.dim}] "
                    "with n >= 1 (set codecs.<role>.config.dim to your vectors' width)."
                )
        values = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(x) for x in items], batch_first=True)
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long, device=values.device)
        return {"values": values, "lengths": lengths}  # [B, N, D], [B]

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        ref = self.stats.shift
        return Posterior(mean=batch["values"].to(ref), lengths=batch["lengths"].to(ref.device))

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[Tensor]:
        return [v[: int(n)] for v, n in zip(z, lengths)]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise CodecOutputError("codec 'identity' has nothing to train: use it frozen in the prior stage.")

    def example_items(self, n: int, generator: torch.Generator) -> list[Tensor]:
        c = self.config
        if c.tokens_per_item:
            counts = [c.tokens_per_item] * n
        else:
            counts = torch.randint(1, min(3 * c.block_size, c.max_tokens) + 1, (n,), generator=generator).tolist()
        return [torch.randn(k, c.dim, generator=generator) for k in counts]
