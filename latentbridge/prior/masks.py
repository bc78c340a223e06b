"""The block-causal attention rule of the two-copy layout (Cola DLM; ARCHITECTURE.md §4).

For query q and key k of the same sample:
  - a clean (or cond) token sees clean/cond tokens of blocks <= its own block;
  - a noisy token of block b sees clean/cond tokens of blocks < b and noisy tokens of block b;
  - clean tokens never see noisy ones; nothing crosses samples.
Padding tokens (sample < 0) see only themselves, so no attention row is empty.

The rule is a pure function of per-token metadata, so the same function serves training (one packed
row), generation with a KV cache (keys = cache + new tokens) and FlexAttention's mask_mod.

Dimensions: B rows, Lq query tokens, Lk key tokens.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class TokenMeta:
    """Per-token metadata the attention rule and positional encoding need; each field [B, L]."""

    sample: Tensor
    """int64 sample id (several samples share a packed row); -1 marks padding."""
    block: Tensor
    """int64 block index within the sample, growing along the sequence across segments."""
    noisy: Tensor
    """bool: True for the noisy copy of a target block, False for clean and cond tokens."""
    position: Tensor
    """int64 position within the sample; the noisy copy shares its clean twin's position."""

    def __len__(self) -> int:
        return self.sample.shape[1]

    @staticmethod
    def cat(metas: list[TokenMeta]) -> TokenMeta:
        """Concatenate along the token axis."""
        return TokenMeta(*(torch.cat([getattr(m, f.name) for m in metas], dim=1) for f in dataclasses.fields(TokenMeta)))


def index_in_block(meta: TokenMeta) -> Tensor:
    """[B, L] int64: each token's place within its block (0 .. block size - 1): its position minus the first
    position of the tokens of its sample and block. Every set of tokens the prior runs on holds whole blocks (a
    training row, a prefilled context, one generated block), so for an image of one block this is its patch place."""
    b, n = meta.sample.shape
    row = torch.arange(b, device=meta.sample.device)[:, None].expand(b, n)
    key = torch.stack([row, meta.sample, meta.block], dim=-1).reshape(-1, 3)
    _, group = torch.unique(key, dim=0, return_inverse=True)
    pos = meta.position.reshape(-1)
    start = torch.full((int(group.max()) + 1,), torch.iinfo(pos.dtype).max, dtype=pos.dtype, device=pos.device)
    start = start.scatter_reduce(0, group, pos, reduce="amin")
    return (pos - start[group]).reshape(b, n)


def visible(q_sample, q_block, q_noisy, k_sample, k_block, k_noisy):
    """The rule on broadcastable metadata tensors (also usable as a FlexAttention mask_mod body)."""
    same = (q_sample == k_sample) & (q_sample >= 0)
    clean_query = ~q_noisy & ~k_noisy & (k_block <= q_block)
    noisy_query = q_noisy & ((~k_noisy & (k_block < q_block)) | (k_noisy & (k_block == q_block)))
    return same & (clean_query | noisy_query)


def block_causal_mask(q: TokenMeta, k: TokenMeta, q_offset: int | None = None) -> Tensor:
    """Boolean attention mask [B, Lq, Lk], True where query may attend to key.

    The queries are the last Lq keys (as in training, or a KV cache followed by the new tokens);
    `q_offset` is where they start among the keys (default Lk - Lq), so padding queries can see themselves.
    """
    mask = visible(
        q.sample[:, :, None], q.block[:, :, None], q.noisy[:, :, None],
        k.sample[:, None, :], k.block[:, None, :], k.noisy[:, None, :],
    )  # [B, Lq, Lk]
    lq, lk = q.sample.shape[1], k.sample.shape[1]
    offset = lk - lq if q_offset is None else q_offset
    pad = q.sample < 0  # [B, Lq]
    qi, ki = torch.arange(lq, device=mask.device), torch.arange(lk, device=mask.device)
    self_key = ki[None, :] == offset + qi[:, None]  # [Lq, Lk]; no branch on the data, so torch.compile keeps one graph
    return mask | (pad[:, :, None] & self_key[None])
