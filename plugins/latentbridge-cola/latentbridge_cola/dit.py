"""The Cola DLM block-causal DiT as a latentbridge prior backbone (`cola-dit`), written from the release's facts.

Parameter names and shapes are those of the release's `cola_dit/model.safetensors`. Per token: a linear patch-in of
the latent, an AdaLN conditioning vector from a sinusoidal embedding of the flow time (times `time_scale`: the
release integrates t from 1000 to 0) through a three-layer SiLU MLP; blocks of shift/scale AdaLN around a
non-affine LayerNorm, attention with per-head LayerNorm on queries and keys and interleaved-pair RoPE on the first
`rope_dim` channels of each head (base 10000, positions within the sample), a tanh-GELU MLP, and gated residuals;
a final AdaLN'd LayerNorm and a linear patch-out to the velocity.

It keeps latentbridge's prior contract (latentbridge.prior.backbone): latents, times and TokenMeta in, a velocity per
token out, attention by the two-copy block-causal rule, a KV cache of committed clean blocks. The release models one
text stream; further codec streams of an experiment (an image condition, ...) get their own new in/out projections
(`extra_in.<id>`, `extra_out.<id>`), initialised fresh, while the released weights load by name.

Dimensions: B rows, L tokens, Dmax widest codec latent, W width, H heads, Dh head width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.prior import KVCache, PriorBackbone, TokenMeta, block_causal_mask

from latentbridge_cola.checkpoint import known_fields, load_strict, part_directory, read_config


@dataclasses.dataclass
class DiTArch:
    """The release's config.json fields that shape the DiT (defaults: the released ~1.8B prior)."""

    txt_in_channels: int = 16
    txt_out_channels: int = 16
    txt_dim: int = 2048
    emb_dim: int = 2048
    heads: int = 16
    head_dim: int = 128
    expand_ratio: int = 4
    num_layers: int = 24
    norm_eps: float = 1e-5
    qk_bias: bool = False
    patch_size: int = 1
    rope_dim: int = 96
    block_size: int = 4

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> DiTArch:
        arch = cls(**known_fields(cls, data))
        if arch.patch_size != 1:
            raise CheckpointError(f"{where}: patch_size={arch.patch_size}; the cola-dit backbone supports the released patch_size 1.")
        if arch.emb_dim != arch.txt_dim:
            raise CheckpointError(f"{where}: emb_dim {arch.emb_dim} differs from txt_dim {arch.txt_dim}; the released AdaLN "
                                  "layers read an embedding of the model width, so they must agree.")
        if arch.rope_dim % 2 or arch.rope_dim > arch.head_dim:
            raise CheckpointError(f"{where}: rope_dim {arch.rope_dim} must be even and at most head_dim {arch.head_dim}.")
        if arch.txt_in_channels != arch.txt_out_channels:
            raise CheckpointError(f"{where}: txt_in_channels {arch.txt_in_channels} != txt_out_channels {arch.txt_out_channels}.")
        return arch


@dataclasses.dataclass
class ColaDiTOptions:
    """Options of the `cola-dit` prior backbone (under `prior.config`)."""

    path: str = ""
    """The Cola DLM release directory (holding cola_dlm/cola_dit/ or cola_dit/), or the cola_dit directory itself."""
    load_weights: bool = True
    """Start from the released weights (strict key map); false: the release's architecture, freshly initialised."""
    time_scale: float = 1000.0
    """latentbridge's flow time t in [0, 1] times this is the time the DiT embeds (the release integrates 1000 -> 0)."""
    text_codec: int = 0
    """Codec id (position in the experiment's `codecs`) whose latents use the released in/out projections."""


def timestep_embedding(t: Tensor, dim: int = 256) -> Tensor:
    """Sinusoidal embedding [.., dim] of times t [..] (sin first, then cos; frequencies exp(-ln(1e4) i / (dim/2)))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.float()[..., None] * freqs
    out = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    return F.pad(out, (0, 1)) if dim % 2 else out


class TimeMLP(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.proj_in, self.proj_hid, self.proj_out = nn.Linear(256, width), nn.Linear(width, width), nn.Linear(width, out)

    def forward(self, t: Tensor) -> Tensor:
        h = timestep_embedding(t).to(self.proj_in.weight.dtype)
        return self.proj_out(F.silu(self.proj_hid(F.silu(self.proj_in(h)))))


class _Linear(nn.Module):
    """Wraps a Linear as `proj` (the release's `txt_in.proj` / `txt_out.proj` names)."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.proj = nn.Linear(i, o)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Rope(nn.Module):
    """Interleaved-pair rotary embedding of the first rope_dim channels; `freqs` [rope_dim/2] is stored in the release."""

    def __init__(self, rope_dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / (10000 ** (torch.arange(0, rope_dim, 2)[: rope_dim // 2].float() / rope_dim)))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, H, L, Dh], positions [B, L] -> x with its first rope_dim channels rotated (in fp32)."""
        ang = (pos.to(self.freqs.dtype)[..., None] * self.freqs).repeat_interleave(2, dim=-1)[:, None]  # [B, 1, L, R]
        r = ang.shape[-1]
        mid = x[..., :r].float()
        pairs = mid.unflatten(-1, (-1, 2))
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = mid * ang.cos() + rot * ang.sin()
        return torch.cat([out.to(x.dtype), x[..., r:]], dim=-1)


class _Attention(nn.Module):
    def __init__(self, a: DiTArch) -> None:
        super().__init__()
        inner = a.heads * a.head_dim
        self.heads, self.head_dim = a.heads, a.head_dim
        self.proj_qkv = nn.Linear(a.txt_dim, 3 * inner, bias=a.qk_bias)
        self.proj_out = nn.Linear(inner, a.txt_dim, bias=a.qk_bias)
        self.norm_q = nn.LayerNorm(a.head_dim, eps=a.norm_eps)
        self.norm_k = nn.LayerNorm(a.head_dim, eps=a.norm_eps)
        self.rope = nn.Module()
        self.rope.rope = _Rope(a.rope_dim)  # the release's key: blocks.<i>.msa.rope.rope.freqs

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.proj_qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)  # each [B, L, H, Dh]
        q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
        q, k = self.rope.rope(q, pos), self.rope.rope(k, pos)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj_out(o.transpose(1, 2).reshape(b, n, -1))


class _AdaLN(nn.Module):
    def __init__(self, dim: int, layers: tuple[str, ...], modes: tuple[str, ...] = ("in", "out")) -> None:
        super().__init__()
        for layer in layers:
            if "in" in modes:
                self.add_module(f"{layer}_in", nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)))
            if "out" in modes:
                self.add_module(f"{layer}_out", nn.Sequential(nn.SiLU(), nn.Linear(dim, dim)))

    def modulate(self, layer: str, h: Tensor, emb: Tensor, norm: nn.Module) -> Tensor:
        shift, scale = getattr(self, f"{layer}_in")(emb).chunk(2, dim=-1)
        return norm(h) * (1 + scale) + shift

    def gate(self, layer: str, h: Tensor, emb: Tensor, residual: Tensor) -> Tensor:
        return h * getattr(self, f"{layer}_out")(emb) + residual


class _Block(nn.Module):
    def __init__(self, a: DiTArch) -> None:
        super().__init__()
        self.msa_norm = nn.LayerNorm(a.txt_dim, eps=a.norm_eps, elementwise_affine=False)
        self.msa = _Attention(a)
        self.mlp_norm = nn.LayerNorm(a.txt_dim, eps=a.norm_eps, elementwise_affine=False)
        self.mlp = nn.Module()
        self.mlp.proj_in = nn.Linear(a.txt_dim, a.txt_dim * a.expand_ratio)
        self.mlp.proj_out = nn.Linear(a.txt_dim * a.expand_ratio, a.txt_dim)
        self.ada = _AdaLN(a.txt_dim, ("msa", "mlp"))

    def forward(self, h: Tensor, emb: Tensor, pos: Tensor, mask: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        a = self.msa(self.ada.modulate("msa", h, emb, self.msa_norm), pos, mask, cache, layer)
        h = self.ada.gate("msa", a, emb, h)
        m = self.ada.modulate("mlp", h, emb, self.mlp_norm)
        m = self.mlp.proj_out(F.gelu(self.mlp.proj_in(m), approximate="tanh"))
        return self.ada.gate("mlp", m, emb, h)


class ColaDiT(PriorBackbone):
    """Cola DLM's block-causal DiT (the release's weights by name) behind latentbridge's prior contract."""

    name = "cola-dit"
    config_class = ColaDiTOptions

    def __init__(self, arch: DiTArch, codec_dims: tuple[int, ...] = (16,), time_scale: float = 1000.0, text_codec: int = 0) -> None:
        super().__init__()
        if not 0 <= text_codec < len(codec_dims):
            raise ConfigError(f"prior.config.text_codec: {text_codec} is not a codec id of this experiment (0..{len(codec_dims) - 1}).")
        if codec_dims[text_codec] != arch.txt_in_channels:
            raise ConfigError(f"prior.config.text_codec: codec {text_codec} has {codec_dims[text_codec]} latent channels, but the "
                              f"Cola DiT takes {arch.txt_in_channels} (txt_in_channels); use the cola-vae codec for that role.")
        self.arch, self.codec_dims, self.time_scale, self.text_codec = arch, tuple(codec_dims), time_scale, text_codec
        self.dmax = max(codec_dims)
        w = arch.txt_dim
        self.txt_in = _Linear(arch.txt_in_channels, w)
        self.emb_in = TimeMLP(w, arch.emb_dim)
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.num_layers))
        self.txt_out_norm = nn.LayerNorm(w, eps=arch.norm_eps)
        self.txt_out_ada = _AdaLN(w, ("out",), ("in",))
        self.txt_out = _Linear(w, arch.txt_out_channels)
        others = [c for c in range(len(codec_dims)) if c != text_codec]
        self.extra_in = nn.ModuleDict({str(c): nn.Linear(codec_dims[c], w) for c in others})
        self.extra_out = nn.ModuleDict({str(c): nn.Linear(w, codec_dims[c]) for c in others})
        self._init_weights()

    def _init_weights(self) -> None:  # the release's init: xavier linears, zero biases, zero output and AdaLN gates
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            for name in ("msa_in", "msa_out", "mlp_in", "mlp_out"):
                nn.init.zeros_(getattr(block.ada, name)[1].weight)
                nn.init.zeros_(getattr(block.ada, name)[1].bias)
        for lin in [self.txt_out.proj, *self.extra_out.values(), self.txt_out_ada.out_in[1]]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @classmethod
    def from_directory(cls, path: str, codec_dims: tuple[int, ...] | None = None, load_weights: bool = True,
                       time_scale: float = 1000.0, text_codec: int = 0) -> ColaDiT:
        directory = part_directory(path, "dit")
        arch = DiTArch.from_json(read_config(directory, "dit"), str(directory / "config.json"))
        model = cls(arch, codec_dims or (arch.txt_in_channels,), time_scale, text_codec)
        if load_weights:
            model.load_release(directory)
        return model

    @classmethod
    def create(cls, options: ColaDiTOptions, codec_dims: tuple[int, ...]) -> ColaDiT:
        return cls.from_directory(options.path, codec_dims, options.load_weights, options.time_scale, options.text_codec)

    @classmethod
    def experiment_for(cls, directory) -> dict[str, Any] | None:
        """A directory laid out as a Cola DLM release (cola_vae/ or cola_dit/, directly or under cola_dlm/): the experiment
        that runs it as released. What is wrong inside it (a missing file, another architecture) is reported when the
        experiment is built, naming the file."""
        from pathlib import Path

        from latentbridge_cola.run import experiment_data

        root = Path(directory)
        if not any((root / part).is_dir() or (root / "cola_dlm" / part).is_dir() for part in ("cola_vae", "cola_dit")):
            return None
        return experiment_data(root)

    @property
    def ships_weights(self) -> bool:
        return getattr(self, "_loaded", False)

    def load_release(self, directory) -> None:
        """The release's weights by name; the experiment's extra codec projections keep their fresh initialisation."""
        load_strict(self, directory, new_keys=tuple(k for k in self.state_dict() if k.startswith(("extra_in.", "extra_out."))))
        self._loaded = True

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def embed(self, x: Tensor, codec: Tensor) -> Tensor:
        h = torch.where((codec == self.text_codec)[..., None], self.txt_in(x[..., : self.arch.txt_in_channels]), 0.0)
        for c, proj in self.extra_in.items():
            h = h + torch.where((codec == int(c))[..., None], proj(x[..., : self.codec_dims[int(c)]]), 0.0)
        return h

    def project(self, h: Tensor, codec: Tensor) -> Tensor:
        out = torch.where((codec == self.text_codec)[..., None], F.pad(self.txt_out(h), (0, self.dmax - self.arch.txt_out_channels)), 0.0)
        for c, proj in self.extra_out.items():
            v = F.pad(proj(h), (0, self.dmax - self.codec_dims[int(c)]))
            out = out + torch.where((codec == int(c))[..., None], v, 0.0)
        return out

    def forward(self, x: Tensor, t: Tensor, codec: Tensor, meta: TokenMeta, cache: KVCache | None = None,
                commit: bool = False) -> Tensor:
        keys = meta if cache is None else cache.keys_meta(meta)
        mask = block_causal_mask(meta, keys)[:, None]  # [B, 1, L, Lk]
        h = self.embed(x, codec)
        emb = self.emb_in(t * self.time_scale)  # [B, L, W]
        for i, block in enumerate(self.blocks):
            h = block(h, emb, meta.position, mask, cache, i)
        if commit and cache is not None:
            cache.commit(meta)
        h = self.txt_out_ada.modulate("out", h, emb, self.txt_out_norm)
        return self.project(h, codec)


def count_parameters(arch: DiTArch) -> int:
    """Parameters of the DiT of this architecture (one text stream, as released), counted on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in ColaDiT(arch, (arch.txt_in_channels,)).parameters())
