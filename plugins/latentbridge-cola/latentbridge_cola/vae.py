"""The Cola Text VAE (encoder q(z|x), block-causal decoder p(x|z)), written from the release's architecture facts.

Parameter names and shapes are those of the release's `cola_vae/model.safetensors`, so its weights load by name. The
computation follows the released model: token embedding -> 1-D patch convolution -> transformer blocks (post-norm
variant: the attention input is not normalised, the residual stream is normalised before the attention output is
added, the SwiGLU output is normalised before its residual) with LayerNorm query/key normalisation and rotate-half
RoPE over each head (base `rope_theta`, in fp32) -> a mean/log-variance head (LayerNorm on the mean, no affine).
The decoder maps latents back to the model width, runs its own blocks under the same block-causal mask (a token of
block b sees blocks <= b of its own sample) and un-patches to vocabulary logits.

Batches are padded [B, L] with per-sample lengths; padding keys are never attended to, so each sample's numbers are
those of the release's packed (no-padding) layout. Dimensions: B samples, L latent positions, W model width,
H heads, Dh head width, D latent width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.errors import CheckpointError

from latentbridge_cola.checkpoint import known_fields


@dataclasses.dataclass
class VAEArch:
    """The release's config.json fields that shape the Text VAE (defaults: the released ~500M model)."""

    vocab_size: int = 100278
    encoder_num_blocks: int = 4
    decoder_num_blocks: int = 4
    dim: int = 1536
    ffn_dim: int = 6144
    latent_dim: int = 16
    patch_size: int = 1
    num_heads: int = 12
    shared_heads_kv: int = 1
    encoder_last_ln: bool = True
    layer_norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    layer_norm_affine: bool = True
    post_norm: bool = True
    qk_bias: bool = False
    qk_norm: bool = True
    qk_norm_affine: bool = True
    clip_qkv: float | None = None
    rope_theta: float = 500000
    rope_full_precision: bool = True
    bias: bool = True
    act: str = "swiglu"
    causal: bool = False
    block_causal: bool = True
    block_size: int = 4
    use_variation: bool = True
    scaling_factor: float = 1.0
    shifting_factor: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> VAEArch:
        arch = cls(**known_fields(cls, data))
        unsupported = {"layer_norm_type": arch.layer_norm_type == "layer_norm", "shared_heads_kv": arch.shared_heads_kv == 1,
                       "act": arch.act in ("swiglu", "silu", "gelu"), "causal": not arch.causal}
        bad = [k for k, ok in unsupported.items() if not ok]
        if bad:
            raise CheckpointError(f"{where}: {', '.join(f'{k}={getattr(arch, k)!r}' for k in bad)} is not an architecture the released "
                                  "Cola Text VAE uses (layer_norm, shared_heads_kv=1, swiglu/silu/gelu, causal=false); not supported.")
        if arch.dim % arch.num_heads:
            raise CheckpointError(f"{where}: dim {arch.dim} is not divisible by num_heads {arch.num_heads}.")
        return arch


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VAEBlock(nn.Module):
    """One transformer block of the VAE (encoder and decoder share the design)."""

    def __init__(self, a: VAEArch) -> None:
        super().__init__()
        self.a = a
        self.heads, self.head_dim = a.num_heads, a.dim // a.num_heads
        self.norm_attn = nn.LayerNorm(a.dim, eps=a.layer_norm_eps, elementwise_affine=a.layer_norm_affine)
        self.qkv_proj = nn.Linear(a.dim, 3 * a.dim, bias=a.qk_bias)
        if a.qk_norm:
            self.q_norm = nn.LayerNorm(a.dim, eps=a.layer_norm_eps, elementwise_affine=a.qk_norm_affine)
            self.k_norm = nn.LayerNorm(a.dim, eps=a.layer_norm_eps, elementwise_affine=a.qk_norm_affine)
        else:
            self.q_norm = self.k_norm = None
        self.attn_out_proj = nn.Linear(a.dim, a.dim, bias=a.bias)
        self.norm_ffn = nn.LayerNorm(a.dim, eps=a.layer_norm_eps)
        self.ffn_proj = nn.Linear(a.dim, a.ffn_dim, bias=a.bias)
        self.ffn_out = nn.Linear(a.ffn_dim // 2 if a.act == "swiglu" else a.ffn_dim, a.dim, bias=a.bias)

    def _rope(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, H, L, Dh] rotated by positions pos [B, L] (rotate-half layout, fp32 when rope_full_precision)."""
        work = x.float() if self.a.rope_full_precision else x
        inv = 1.0 / (self.a.rope_theta ** (torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float) / self.head_dim))
        ang = pos.float()[..., None] * inv  # [B, L, Dh/2]
        ang = torch.cat((ang, ang), dim=-1)[:, None].to(work.dtype)  # [B, 1, L, Dh]
        return (work * ang.cos() + _rotate_half(work) * ang.sin()).to(x.dtype)

    def _ffn(self, x: Tensor) -> Tensor:
        h = self.ffn_proj(x)
        if self.a.act == "swiglu":
            h, gate = h.chunk(2, dim=-1)
            h = F.silu(gate) * h
        else:
            h = F.silu(h) if self.a.act == "silu" else F.gelu(h)
        return self.ffn_out(h)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, L, W] at positions pos [B, L]; mask [B, 1, L, Lc + L] bool over (past keys, these keys).
        Returns the block's output and these tokens' keys/values [B, H, L, Dh] (normalised and rotated), for a cache."""
        a = self.a
        h = x if a.post_norm else self.norm_attn(x)
        qkv = self.qkv_proj(h)
        if a.clip_qkv is not None:
            qkv = qkv.clamp(-a.clip_qkv, a.clip_qkv)
        q, k, v = qkv.split(a.dim, dim=-1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
        q, k = self._rope(q, pos), self._rope(k, pos)
        new = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x_in = self.norm_attn(x) if a.post_norm else x
        x = x_in + self.attn_out_proj(o.transpose(1, 2).reshape(b, n, a.dim))
        y = self._ffn(x if a.post_norm else self.norm_ffn(x))
        if a.post_norm:
            y = self.norm_ffn(y)
        return x + y, new


def block_causal(q_pos: Tensor, k_pos: Tensor, k_valid: Tensor, block_size: int) -> Tensor:
    """[B, 1, Lq, Lk] bool: a query sees valid keys of its own sample in blocks <= its block (positions in latents)."""
    keep = (q_pos[:, :, None] // block_size) >= (k_pos[:, None, :] // block_size)
    return (keep & k_valid[:, None, :])[:, None]


class ColaTextVAEModule(nn.Module):
    """The Text VAE's weights and its three passes: encode, decode, and a cached block decode for generation."""

    def __init__(self, a: VAEArch) -> None:
        super().__init__()
        self.a = a
        latent_out = 2 * a.latent_dim if a.use_variation else a.latent_dim
        self.encoder = nn.ModuleDict(dict(
            wte=nn.Embedding(a.vocab_size + 1, a.dim),
            patch_embedder=nn.Conv1d(a.dim, a.dim, kernel_size=a.patch_size, stride=a.patch_size),
            blocks=nn.ModuleList(VAEBlock(a) for _ in range(a.encoder_num_blocks)),
            final_layer=nn.Linear(a.dim, latent_out, bias=a.bias),
            final_norm=nn.LayerNorm(a.latent_dim, eps=a.layer_norm_eps, elementwise_affine=False)
            if (a.encoder_last_ln or not a.use_variation) else nn.Identity(),
        ))
        self.decoder = nn.ModuleDict(dict(
            in_layer=nn.Linear(a.latent_dim, a.dim, bias=a.bias),
            blocks=nn.ModuleList(VAEBlock(a) for _ in range(a.decoder_num_blocks)),
            unpatch_layer=nn.Linear(a.dim, a.patch_size * a.dim),
            final_norm=nn.LayerNorm(a.dim, eps=a.layer_norm_eps),
            final_layer=nn.Linear(a.dim, a.vocab_size, bias=a.bias),
        ))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():  # the release's init: truncated normal (std 0.02, cut at 3 std), zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.06, b=0.06)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def _mask(self, pos: Tensor, valid: Tensor) -> Tensor | None:
        if self.a.block_causal:
            return block_causal(pos, pos, valid, self.a.block_size)
        return valid[:, None, None, :].expand(-1, 1, pos.shape[1], -1)

    def encode(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """Token ids [B, T] (T a multiple of patch_size, each item padded to whole blocks), valid latents per item [B]
        -> raw posterior mean [B, N, D] and log-variance (or None)."""
        x = self.encoder.patch_embedder(self.encoder.wte(ids).transpose(1, 2)).transpose(1, 2)  # [B, N, W]
        n = x.shape[1]
        pos = torch.arange(n, device=ids.device).expand(ids.shape[0], n)
        valid = pos < lengths[:, None].to(ids.device)
        mask = self._mask(pos, valid)
        for block in self.encoder.blocks:
            x, _ = block(x, pos, mask)
        x = self.encoder.final_layer(x)
        if not self.a.use_variation:
            return self.encoder.final_norm(x), None
        mean, logvar = x.chunk(2, dim=-1)
        if self.a.encoder_last_ln:
            mean = self.encoder.final_norm(mean)
        return mean, logvar.clamp(-30.0, 20.0)

    def _logits(self, h: Tensor) -> Tensor:
        h = self.decoder.unpatch_layer(h)  # [B, L, W * p]
        b, n, _ = h.shape
        h = h.view(b, n, self.a.dim, self.a.patch_size).transpose(2, 3).reshape(b, n * self.a.patch_size, self.a.dim)
        return self.decoder.final_layer(self.decoder.final_norm(h))  # [B, L * p, V]

    def decode(self, z: Tensor, lengths: Tensor) -> Tensor:
        """Latents [B, N, D] (the prior's units) -> token logits [B, N * patch_size, V]."""
        h = self.decoder.in_layer(z)
        n = z.shape[1]
        pos = torch.arange(n, device=z.device).expand(z.shape[0], n)
        mask = self._mask(pos, pos < lengths[:, None].to(z.device))
        for block in self.decoder.blocks:
            h, _ = block(h, pos, mask)
        return self._logits(h)

    def decode_step(self, z: Tensor, pos: Tensor, valid: Tensor, cache: list[tuple[Tensor, Tensor]] | None,
                    cache_pos: Tensor | None, cache_valid: Tensor | None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Decode new latents z [B, K, D] at positions pos [B, K] attending to a cache of earlier ones; returns logits
        [B, K * p, V] and the cache with these tokens appended."""
        h = self.decoder.in_layer(z)
        k_pos = pos if cache_pos is None else torch.cat([cache_pos, pos], dim=1)
        k_valid = valid if cache_valid is None else torch.cat([cache_valid, valid], dim=1)
        mask = block_causal(pos, k_pos, k_valid, self.a.block_size) if self.a.block_causal else k_valid[:, None, None, :]
        new_cache = []
        for i, block in enumerate(self.decoder.blocks):
            past = cache[i] if cache else None
            h, kv = block(h, pos, mask, past)
            new_cache.append(kv if past is None else (torch.cat([past[0], kv[0]], 2), torch.cat([past[1], kv[1]], 2)))
        return self._logits(h), new_cache


def count_parameters(a: VAEArch) -> int:
    """Parameters of the Text VAE of this architecture, counted on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in ColaTextVAEModule(a).parameters())


__all__ = ["ColaTextVAEModule", "VAEArch", "block_causal", "count_parameters"]
