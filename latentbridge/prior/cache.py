"""Key/value cache of committed clean blocks, with the metadata the attention rule needs.

Only clean tokens (t = 0) are ever committed: by the attention rule clean tokens never see noisy
ones, so a committed token's keys and values never change and the cache is exact.

Dimensions: B rows, H heads, Lc cached tokens, Dh head channels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentbridge.prior.masks import TokenMeta


class KVCache:
    """Per-layer keys and values [B, H, Lc, Dh] plus the cached tokens' TokenMeta."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.meta: TokenMeta | None = None

    def __len__(self) -> int:
        return 0 if self.meta is None else len(self.meta)

    def layer(self, i: int) -> tuple[Tensor | None, Tensor | None]:
        return self.keys[i], self.values[i]

    def append_layer(self, i: int, k: Tensor, v: Tensor) -> None:
        """Add the new tokens' keys/values of layer i ([B, H, L, Dh])."""
        self.keys[i] = k if self.keys[i] is None else torch.cat([self.keys[i], k], dim=2)
        self.values[i] = v if self.values[i] is None else torch.cat([self.values[i], v], dim=2)

    def append_meta(self, meta: TokenMeta) -> None:
        if bool(meta.noisy.any()):
            raise ValueError("only clean tokens (t = 0) may be committed to the KV cache")
        self.meta = meta if self.meta is None else TokenMeta.cat([self.meta, meta])

    def select_rows(self, rows: Tensor) -> KVCache:
        """A cache holding only the given batch rows (e.g. to drop finished samples)."""
        out = KVCache(len(self.keys))
        out.keys = [None if k is None else k[rows] for k in self.keys]
        out.values = [None if v is None else v[rows] for v in self.values]
        if self.meta is not None:
            out.meta = TokenMeta(self.meta.sample[rows], self.meta.block[rows], self.meta.noisy[rows], self.meta.position[rows])
        return out
