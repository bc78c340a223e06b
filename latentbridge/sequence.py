"""Segments -> packed token sequences with per-token metadata, and back.

An example is a list of segments `(codec, latents [n, D], role)`; role `cond` is clean context with
no loss, role `target` is what the prior learns to generate. Each segment is cut into blocks of its
codec's block size, the block index growing along the example across segments. Several examples
share one row without padding between them (per-token sample id), as in Cola DLM's no-padding
layout. In the two-copy training layout every target token appears once clean (t = 0) and once
noisy, the two copies sharing a position (ARCHITECTURE.md §4).

Dimensions: B rows, L tokens per row, Dmax widest codec latent.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

from latentbridge.prior.masks import TokenMeta

Role = Literal["cond", "target"]


@dataclasses.dataclass
class Segment:
    """One codec's latents inside an example."""

    codec: str
    """Codec (stream) name, a key of the SequenceLayout."""
    latents: Tensor
    """[n, D] normalized latents of one item."""
    role: Role = "target"
    """`cond`: clean context without loss; `target`: generated, with loss."""


Example = list[Segment]


@dataclasses.dataclass(frozen=True)
class Stream:
    """What the sequence needs to know of a codec."""

    dim: int
    block_size: int


class SequenceLayout:
    """Codec names -> stream ids, latent widths and block sizes (ids in the given order)."""

    def __init__(self, streams: Mapping[str, Stream]) -> None:
        if not streams:
            raise ValueError("a SequenceLayout needs at least one codec stream")
        self.streams = dict(streams)
        self.names = list(self.streams)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.dims = tuple(s.dim for s in self.streams.values())
        self.dmax = max(self.dims)

    @classmethod
    def from_specs(cls, specs: Mapping[str, object]) -> SequenceLayout:
        """From objects with `dim` and `block_size` (e.g. codecs' LatentSpec)."""
        return cls({name: Stream(spec.dim, spec.block_size) for name, spec in specs.items()})

    def stream(self, name: str) -> Stream:
        if name not in self.streams:
            raise KeyError(f"codec {name!r} is not in this sequence layout; known: {', '.join(self.names)}")
        return self.streams[name]


@dataclasses.dataclass
class PackedBatch:
    """Packed rows of examples; every per-token field is [B, L]."""

    values: Tensor
    """[B, L, Dmax] clean latents of every token (zero-padded channels); the trainer noises the noisy copy."""
    codec: Tensor
    """int64 stream id."""
    meta: TokenMeta
    """sample id, block, noisy copy flag, position: what the attention rule and RoPE need."""
    cond: Tensor
    """bool: token of a `cond` segment."""
    segment: Tensor
    """int64 index of the token's segment within its example (-1 at padding)."""
    t: Tensor
    """float flow time per token (0 for clean tokens)."""
    channel_mask: Tensor
    """[B, L, Dmax] bool: channels that exist for the token's codec."""
    num_examples: int

    @property
    def valid(self) -> Tensor:
        return self.meta.sample >= 0

    @property
    def loss_mask(self) -> Tensor:
        """Noisy copies of target tokens: where the flow-matching loss applies."""
        return self.meta.noisy & ~self.cond & self.valid


def _example_tokens(example: Example, layout: SequenceLayout, two_copies: bool) -> dict[str, list]:
    """Per-token lists for one example: clean copy of every segment, then the noisy copy of targets."""
    parts: dict[str, list] = {k: [] for k in ("values", "codec", "block", "noisy", "position", "cond", "segment")}
    block, position = 0, 0
    noisy_parts = []
    for s, seg in enumerate(example):
        stream = layout.stream(seg.codec)
        lat = seg.latents
        if lat.ndim != 2 or lat.shape[1] != stream.dim or lat.shape[0] < 1:
            raise ValueError(f"segment {s} ({seg.codec}): latents must be [n >= 1, {stream.dim}], got {tuple(lat.shape)}")
        if seg.role not in ("cond", "target"):
            raise ValueError(f"segment {s}: role must be 'cond' or 'target', got {seg.role!r}")
        n = lat.shape[0]
        blocks = block + torch.arange(n) // stream.block_size
        positions = position + torch.arange(n)
        copy = (lat, layout.ids[seg.codec], blocks, positions, seg.role == "cond", s)
        _append(parts, *copy, noisy=False)
        if two_copies and seg.role == "target":
            noisy_parts.append(copy)
        block += -(-n // stream.block_size)
        position += n
    for copy in noisy_parts:
        _append(parts, *copy, noisy=True)
    return parts


def _append(parts: dict[str, list], lat, codec_id, blocks, positions, is_cond, s, *, noisy: bool) -> None:
    n = lat.shape[0]
    parts["values"].append(lat)
    parts["codec"].append(torch.full((n,), codec_id))
    parts["block"].append(blocks)
    parts["noisy"].append(torch.full((n,), noisy))
    parts["position"].append(positions)
    parts["cond"].append(torch.full((n,), is_cond))
    parts["segment"].append(torch.full((n,), s))


def pack(
    examples: Sequence[Example],
    layout: SequenceLayout,
    *,
    two_copies: bool = True,
    row_length: int | None = None,
) -> PackedBatch:
    """Pack examples into rows.

    row_length None: one example per row, padded to the longest. Otherwise examples fill rows of
    `row_length` tokens in order (a new row when the next one does not fit); sample ids are the
    examples' indices.
    """
    if not examples:
        raise ValueError("pack needs at least one example")
    per_example = [_example_tokens(ex, layout, two_copies) for ex in examples]
    lengths = [sum(len(p) for p in ex["codec"]) for ex in per_example]
    rows: list[list[int]] = []
    if row_length is None:
        rows = [[i] for i in range(len(examples))]
        width = max(lengths)
    else:
        width = row_length
        used = row_length
        for i, n in enumerate(lengths):
            if n > row_length:
                raise ValueError(f"example {i} has {n} tokens, more than row_length={row_length}; raise row_length")
            if used + n > row_length:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
    device = examples[0][0].latents.device
    dtype = examples[0][0].latents.dtype
    b = len(rows)
    values = torch.zeros(b, width, layout.dmax, dtype=dtype, device=device)
    codec = torch.zeros(b, width, dtype=torch.long)
    sample = torch.full((b, width), -1, dtype=torch.long)
    block = torch.zeros(b, width, dtype=torch.long)
    noisy = torch.zeros(b, width, dtype=torch.bool)
    position = torch.zeros(b, width, dtype=torch.long)
    cond = torch.zeros(b, width, dtype=torch.bool)
    segment = torch.full((b, width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ex = per_example[i]
            n = lengths[i]
            sl = slice(start, start + n)
            col = start
            for lat in ex["values"]:
                values[r, col : col + lat.shape[0], : lat.shape[1]] = lat
                col += lat.shape[0]
            codec[r, sl] = torch.cat(ex["codec"])
            sample[r, sl] = i
            block[r, sl] = torch.cat(ex["block"])
            noisy[r, sl] = torch.cat(ex["noisy"])
            position[r, sl] = torch.cat(ex["position"])
            cond[r, sl] = torch.cat(ex["cond"])
            segment[r, sl] = torch.cat(ex["segment"])
            start += n
    dims = torch.tensor(layout.dims)
    channel_mask = (torch.arange(layout.dmax)[None, None, :] < dims[codec][..., None]) & (sample >= 0)[..., None]
    to = lambda x: x.to(device)  # noqa: E731
    return PackedBatch(
        values=values,
        codec=to(codec),
        meta=TokenMeta(to(sample), to(block), to(noisy), to(position)),
        cond=to(cond),
        segment=to(segment),
        t=torch.zeros(b, width, dtype=dtype, device=device),
        channel_mask=to(channel_mask),
        num_examples=len(examples),
    )


def unpack(packed: PackedBatch, values: Tensor, layout: SequenceLayout, *, noisy: bool = True) -> list[dict[int, Tensor]]:
    """Per example: segment index -> its tokens' rows of `values` ([n, D] in the segment codec's width).

    `noisy` picks the copy (the noisy copy exists for target segments only in the two-copy layout).
    """
    out: list[dict[int, Tensor]] = [{} for _ in range(packed.num_examples)]
    meta = packed.meta
    sel = (meta.sample >= 0) & (meta.noisy == noisy)
    rows, cols = sel.nonzero(as_tuple=True)
    samples, segments = meta.sample[rows, cols].tolist(), packed.segment[rows, cols].tolist()
    codecs = packed.codec[rows, cols].tolist()
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for r, c, s, g, k in zip(rows.tolist(), cols.tolist(), samples, segments, codecs):
        groups.setdefault((s, g), []).append((r, c, k))
    for (s, g), toks in groups.items():
        r = torch.tensor([t[0] for t in toks])
        c = torch.tensor([t[1] for t in toks])
        out[s][g] = values[r, c, : layout.dims[toks[0][2]]]
    return out


def block_groups(packed: PackedBatch) -> tuple[Tensor, Tensor]:
    """Noisy blocks as groups for drawing one flow time each.

    Returns group [B, L] (index of the token's noisy block, -1 for other tokens) and the stream id of
    each group [G].
    """
    meta = packed.meta
    noisy = meta.noisy & (meta.sample >= 0)
    b, l = noisy.shape
    row = torch.arange(b, device=noisy.device)[:, None].expand(b, l)
    keys = torch.stack([row[noisy], meta.sample[noisy], meta.block[noisy]], dim=1)  # [M, 3]
    group = torch.full((b, l), -1, dtype=torch.long, device=noisy.device)
    if keys.shape[0] == 0:
        return group, torch.zeros(0, dtype=torch.long, device=noisy.device)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    group[noisy] = inverse
    group_codec = torch.zeros(unique.shape[0], dtype=torch.long, device=noisy.device)
    group_codec[inverse] = packed.codec[noisy]
    return group, group_codec


def drop_conditions(examples: Sequence[Example], p: float, generator: torch.Generator | None = None) -> list[Example]:
    """Classifier-free guidance training: drop each example's `cond` segments together with probability p."""
    if p <= 0:
        return list(examples)
    keep = torch.rand(len(examples), generator=generator) >= p
    return [ex if k else [s for s in ex if s.role != "cond"] or ex for ex, k in zip(examples, keep.tolist())]
