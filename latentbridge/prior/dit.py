"""The block-causal Diffusion Transformer prior over packed multimodal latent sequences.

It maps noisy/clean latent tokens of several codec streams, each token with its own flow time, to a
velocity per token. It knows codec streams only as integer ids with a latent width; it knows neither
codecs nor how its output is integrated (ARCHITECTURE.md §2).

Dimensions:
    B  rows        L  tokens (new)      Dmax widest codec latent (tokens are zero-padded to it)
    C  codecs      W  model width       H heads
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from latentbridge.prior.backbone import PriorBackbone
from latentbridge.prior.cache import KVCache
from latentbridge.prior.layers import DiTBlock, FinalLayer, RotaryEmbedding, TimestepEmbedder, TokenConditioning
from latentbridge.prior.masks import TokenMeta, block_causal_mask, index_in_block, visible


@dataclasses.dataclass
class PriorConfig:
    """Architecture of the block-causal DiT."""

    codec_dims: tuple[int, ...] = (16,)
    """Latent width of each codec stream, in codec-id order."""
    width: int = 256
    """Model width W."""
    depth: int = 6
    """Number of DiT blocks."""
    heads: int = 8
    """Attention heads (W must be divisible by it)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of W."""
    rope_fraction: float = 0.75
    """Share of each head's channels that get rotary position embedding (Cola DLM: most of them)."""
    rope_base: float = 10_000.0
    """RoPE base period."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: SDPA with a boolean mask, or FlexAttention with a block mask (CUDA only)."""
    block_positions: int = 0
    """Size of a learned table of places within a block (an image's patch place), added to each token's input
    beside RoPE's sequence position; 0: none (RoPE alone)."""
    block_position_codecs: tuple[int, ...] = ()
    """Codec ids whose tokens get the table; empty: every codec's."""
    step_conditioning: bool = False
    """Embed a second time per token, the span of the step the velocity is for (shortcut models; 0: instantaneous)."""
    switch_classes: int = 0
    """Outputs of the switch head, which reads a document item's last token and says what follows: one class per codec
    stream and one for the end of the document (streams + 1); 0: no head (no document tasks)."""


PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 64, "depth": 2, "heads": 4},  # tests
    "small": {"width": 256, "depth": 6, "heads": 8},  # CPU runs
    "base": {"width": 768, "depth": 12, "heads": 12},  # one GPU
    "large": {"width": 1024, "depth": 24, "heads": 16},  # GPUs
}


def prior_config(preset: str, codec_dims: tuple[int, ...], **overrides) -> PriorConfig:
    """A PriorConfig from a preset name, the codec widths and any field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown prior preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return PriorConfig(codec_dims=tuple(codec_dims), **fields)


class BlockCausalDiT(PriorBackbone):
    """Velocity network v(z_t, t) over a packed sequence of codec latents (the built-in backbone `dit`)."""

    name = "dit"
    config_class = PriorConfig

    @classmethod
    def create(cls, options: PriorConfig, codec_dims: tuple[int, ...]) -> BlockCausalDiT:
        return cls(dataclasses.replace(options, codec_dims=tuple(codec_dims)))

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        w, dims = config.width, config.codec_dims
        self.dmax = max(dims)
        self.in_proj = nn.ModuleList(nn.Linear(d, w) for d in dims)
        self.codec_embed = nn.Embedding(len(dims), w)
        self.block_pos = nn.Embedding(config.block_positions, w) if config.block_positions else None
        if config.block_positions:
            chosen = config.block_position_codecs or tuple(range(len(dims)))
            if not all(0 <= c < len(dims) for c in chosen):
                raise ValueError(f"block_position_codecs {chosen} names codec ids outside 0..{len(dims) - 1}")
            gate = torch.zeros(len(dims))
            gate[list(chosen)] = 1.0
            self.register_buffer("block_pos_gate", gate, persistent=False)  # [num codecs]: 1 where the table applies
        self.t_embed = TimestepEmbedder(w)
        self.step_embed = TimestepEmbedder(w) if config.step_conditioning else None
        self.rope = RotaryEmbedding(w // config.heads, config.rope_fraction, config.rope_base)
        self.blocks = nn.ModuleList(DiTBlock(w, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(w)
        self.out_proj = nn.ModuleList(nn.Linear(w, d) for d in dims)
        # what follows a document item (a codec stream, or the end): read off the last block's hidden state
        self.switch_head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, config.switch_classes)) if config.switch_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.codec_embed.weight, std=0.02)
        if self.block_pos is not None:
            nn.init.normal_(self.block_pos.weight, std=0.02)
        for mlp in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(mlp.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero (re-zero after the xavier pass above)
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        if self.step_embed is not None:  # zero: a prior trained without it starts out unchanged
            nn.init.zeros_(self.step_embed.mlp[2].weight)
            nn.init.zeros_(self.step_embed.mlp[2].bias)
        nn.init.zeros_(self.final.ada[1].weight)
        nn.init.zeros_(self.final.ada[1].bias)
        for proj in self.out_proj:  # zero output: training starts from v = 0
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    @property
    def takes_step(self) -> bool:
        return self.step_embed is not None

    @property
    def switch_classes(self) -> int:
        return self.config.switch_classes

    # ---- codec streams in and out ------------------------------------------------------------------

    def embed(self, x: Tensor, codec: Tensor) -> Tensor:
        """[B, L, Dmax] latents -> [B, L, W] through each token's own codec projection + codec embedding."""
        h = self.codec_embed(codec)  # [B, L, W]
        for c, (proj, d) in enumerate(zip(self.in_proj, self.config.codec_dims)):
            h = h + torch.where((codec == c)[..., None], proj(x[..., :d]), 0.0)
        return h

    def project(self, h: Tensor, codec: Tensor) -> Tensor:
        """[B, L, W] -> [B, L, Dmax] velocities through each token's codec output projection (zero-padded)."""
        out = None
        for c, (proj, d) in enumerate(zip(self.out_proj, self.config.codec_dims)):
            v = nn.functional.pad(proj(h), (0, self.dmax - d))  # [B, L, Dmax]
            v = torch.where((codec == c)[..., None], v, 0.0)
            out = v if out is None else out + v
        return out

    def conditioning(self, t: Tensor, step: Tensor | None = None) -> Tensor | TokenConditioning:
        """Each token's conditioning from its flow time t [B, L] (and step span): the time embedding, plus the step
        embedding of a prior with step_conditioning. Computed once per distinct (t, step) as a TokenConditioning
        (its adaLN projections then run once per distinct value); dense [B, L, W] while torch.compile traces, whose
        graphs want shapes that do not depend on the data."""
        keys = t if self.step_embed is None else torch.stack([t, torch.zeros_like(t) if step is None else step], -1)
        if torch.compiler.is_compiling():
            return self._embed_conditioning(keys)
        flat = keys.reshape(-1) if self.step_embed is None else keys.reshape(-1, 2)  # one row per token
        values, index = torch.unique(flat, dim=0, return_inverse=True)
        return TokenConditioning(self._embed_conditioning(values), index.view(t.shape))

    def _embed_conditioning(self, keys: Tensor) -> Tensor:
        """keys [..] flow times, or [.., 2] (time, step span) -> conditioning [.., W]."""
        if self.step_embed is None:
            return self.t_embed(keys)
        return self.t_embed(keys[..., 0]) + self.step_embed(keys[..., 1])

    # ---- attention mask ---------------------------------------------------------------------------------

    def attention_mask(self, q: TokenMeta, k: TokenMeta) -> object:
        """SDPA boolean mask [B, 1, Lq, Lk], or a FlexAttention BlockMask on CUDA."""
        if self.config.attention == "flex" and q.sample.is_cuda:
            return _flex_block_mask(q, k)
        return block_causal_mask(q, k)[:, None]

    # ---- forward ---------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        codec: Tensor,
        meta: TokenMeta,
        cache: KVCache | None = None,
        commit: bool = False,
        step: Tensor | None = None,
        switch: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocities [B, L, Dmax] of tokens x [B, L, Dmax] at times t [B, L].

        With a cache, the tokens also attend to the cached ones; `commit` appends these tokens (which
        must be clean) to the cache. `step` [B, L]: the span each token's velocity averages over (a prior with
        step_conditioning; None: 0, the instantaneous velocity). `switch`: also the switch head's logits [B, L,
        switch_classes] at every token (meaningful at a document item's last clean token), as (velocities, logits).
        """
        if switch and self.switch_head is None:
            raise ValueError("this prior has no switch head (prior config switch_classes = 0): it was built without a "
                             "document task, so it cannot say which codec comes next")
        keys = meta if cache is None else cache.keys_meta(meta)
        mask = self.attention_mask(meta, keys)
        h = self.embed(x, codec)  # [B, L, W]
        if self.block_pos is not None:
            places = self.block_pos(index_in_block(meta).clamp_max(self.config.block_positions - 1))
            h = h + places * self.block_pos_gate.to(places.dtype)[codec][..., None]
        if self.step_embed is None and step is not None and bool((step != 0).any()):
            raise ValueError("this prior was built without step_conditioning: it cannot take a step span (prior.step_conditioning)")
        c = self.conditioning(t, step)
        cos_sin = self.rope.angles(meta.position)
        for i, block in enumerate(self.blocks):
            h = block(h, c, self.rope, cos_sin, mask, cache, i)
        if commit and cache is not None:
            cache.commit(meta)
        v = self.project(self.final(h, c), codec)
        return (v, self.switch_head(h)) if switch else v


def _flex_block_mask(q: TokenMeta, k: TokenMeta):
    from torch.nn.attention.flex_attention import create_block_mask

    lq, lk = q.sample.shape[1], k.sample.shape[1]
    offset = lk - lq

    def mask_mod(b, h, qi, ki):
        keep = visible(q.sample[b, qi], q.block[b, qi], q.noisy[b, qi], k.sample[b, ki], k.block[b, ki], k.noisy[b, ki])
        return keep | ((q.sample[b, qi] < 0) & (ki == qi + offset))

    return create_block_mask(mask_mod, q.sample.shape[0], None, lq, lk, device=q.sample.device)
