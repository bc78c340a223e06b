"""A small pre-LayerNorm transformer with rotary positions, an explicit attention mask and a KV cache.

Both halves of the Text VAE use it: the encoder over tokens (block-causal, one block per latent) and
the decoder over latents (block-causal, one block per prior block). The cache holds each layer's keys
and values of earlier positions, so the decoder can run block by block at generation time.

Dimensions: B batch, L positions, Lk key positions (cached + new), W width, H heads, hd head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


def rotary_angles(pos: Tensor, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos and sin [B, 1, L, hd/2] of the angles pos [B, L] * base^(-2i/hd), computed once per forward."""
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, device=pos.device, dtype=torch.float32) / half)  # [hd/2]
    angles = pos.float()[:, None, :, None] * freqs
    return angles.cos(), angles.sin()


def rotary(x: Tensor, rot: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate channel pairs (i, i + hd/2) of x [B, H, L, hd] by the precomputed angles."""
    cos, sin = (r.to(x.dtype) for r in rot)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, rot: tuple[Tensor, Tensor], mask: Tensor, past: KV | None = None) -> tuple[Tensor, KV]:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        q, k = rotary(q, rot), rotary(k, rot)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask [B, 1, L, Lk] bool
        return self.out(rearrange(y, "b h l d -> b l (h d)")), (k, v)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, rot: tuple[Tensor, Tensor], mask: Tensor, past: KV | None = None) -> tuple[Tensor, KV]:
        a, kv = self.attn(self.norm1(x), rot, mask, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Transformer(nn.Module):
    """Blocks + final LayerNorm. forward(x [B, L, W], pos [B, L], mask [B, 1, L, Lk], past) -> (y, per-layer KV)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head_dim = width // heads

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor, past: list[KV] | None = None) -> tuple[Tensor, list[KV]]:
        rot = rotary_angles(pos, self.head_dim)
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, rot, mask, past[i] if past is not None else None)
            kvs.append(kv)
        return self.norm(x), kvs


def block_mask(query_block: Tensor, key_block: Tensor, key_valid: Tensor) -> Tensor:
    """[B, Lq] and [B, Lk] block ids, [B, Lk] valid keys -> [B, 1, Lq, Lk]: key block <= query block, key valid.

    A query with no such key (padding of a sample with no valid token, e.g. an empty prefix beside longer ones)
    sees every key instead: an attention row with nothing to attend to is NaN on some GPU kernels. Such a
    query's output is padding, and no valid query reads it (its key is invalid)."""
    mask = (key_block[:, None, :] <= query_block[:, :, None]) & key_valid[:, None, :]
    return (mask | ~mask.any(dim=-1, keepdim=True))[:, None]
