"""Key/value cache of committed clean blocks, with the metadata the attention rule needs.

Only clean tokens (t = 0) are ever committed: by the attention rule clean tokens never see noisy
ones, so a committed token's keys and values never change and the cache is exact.

Keys and values live in preallocated buffers that grow by doubling. A forward pass writes its new
tokens' keys/values right after the committed ones and attends over that view; committing just
advances the length, and an uncommitted pass is overwritten by the next one. So no step copies the
whole cache (inference only: the buffers are written in place).

Dimensions: B rows, H heads, Lc cached tokens, L new tokens, Dh head channels.
"""

from __future__ import annotations

from torch import Tensor

from latentbridge.prior.masks import TokenMeta


class KVCache:
    """Per-layer key/value buffers [B, H, capacity, Dh] plus the cached tokens' TokenMeta."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0
        self.meta: TokenMeta | None = None

    def __len__(self) -> int:
        return self.length

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new tokens' k, v [B, H, L, Dh] after the cached ones; return keys/values [B, H, Lc + L, Dh]."""
        end = self.length + k.shape[2]
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[2] < end:
            capacity = max(end, 2 * (0 if buf_k is None else buf_k.shape[2]), 64)
            new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
            if buf_k is not None:
                new_k[:, :, : self.length] = buf_k[:, :, : self.length]
                new_v[:, :, : self.length] = buf_v[:, :, : self.length]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, self.length : end] = k
        buf_v[:, :, self.length : end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def keys_meta(self, meta: TokenMeta) -> TokenMeta:
        """Metadata of the keys a pass over `meta` attends to: the cached tokens, then the new ones."""
        return meta if self.meta is None else TokenMeta.cat([self.meta, meta])

    def commit(self, meta: TokenMeta) -> None:
        """Keep the tokens of the last pass (which must be clean) in the cache."""
        if bool(meta.noisy.any()):
            raise ValueError("only clean tokens (t = 0) may be committed to the KV cache")
        self.length += meta.sample.shape[1]
        owned = TokenMeta(*(x.clone() for x in (meta.sample, meta.block, meta.noisy, meta.position)))  # callers may reuse theirs
        self.meta = self.keys_meta(owned)
