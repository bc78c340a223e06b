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

import collections
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
    boundary: bool = False
    """A document's item: the prior learns what follows it (the next segment's codec, or the end of the document) from
    the clean copy of its last token (PackedBatch.switch)."""


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
    switch: Tensor | None = None
    """int64: at the clean copy of a `boundary` segment's last token, what follows it -- the next segment's stream id,
    or `len(layout.names)` for the end of the document; -1 elsewhere. None when no segment is a boundary."""

    @property
    def valid(self) -> Tensor:
        return self.meta.sample >= 0

    @property
    def loss_mask(self) -> Tensor:
        """Noisy copies of target tokens: where the flow-matching loss applies."""
        return self.meta.noisy & ~self.cond & self.valid


def end_of_document(layout: SequenceLayout) -> int:
    """The switch label that ends a document: one past the last stream id."""
    return len(layout.names)


def _example_tokens(example: Example, layout: SequenceLayout, two_copies: bool,
                    unread_clean: bool = True) -> tuple[list[tuple], list[Tensor]]:
    """Token table of one example: the clean copy of every segment, then the noisy copy of the targets.

    With `unread_clean` False (two-copy layout only) the clean copies that no noisy token attends to --
    blocks at or after the example's last target block -- are left out; the loss is unchanged. A last segment that is
    a `boundary` keeps its last block's clean copy: the switch head reads it (what follows: the end).
    Returns per-token tuples (codec id, block, noisy, position, cond, segment, switch label) and the latents in order.
    """
    rows: list[tuple] = []
    latents: list[Tensor] = []
    noisy_rows: list[tuple] = []
    noisy_latents: list[Tensor] = []
    block, position = 0, 0
    for s, seg in enumerate(example):
        stream = layout.stream(seg.codec)
        lat = seg.latents
        if lat.ndim != 2 or lat.shape[1] != stream.dim or lat.shape[0] < 1:
            raise ValueError(f"segment {s} ({seg.codec}): latents must be [n >= 1, {stream.dim}], got {tuple(lat.shape)}")
        if seg.role not in ("cond", "target"):
            raise ValueError(f"segment {s}: role must be 'cond' or 'target', got {seg.role!r}")
        n, cid, is_cond = lat.shape[0], layout.ids[seg.codec], seg.role == "cond"
        label = -1
        if seg.boundary:
            label = layout.ids[example[s + 1].codec] if s + 1 < len(example) else end_of_document(layout)
        tokens = [(cid, block + j // stream.block_size, position + j, is_cond, s) for j in range(n)]
        rows += [(c, b, False, p, k, g, label if j == n - 1 else -1) for j, (c, b, p, k, g) in enumerate(tokens)]
        latents.append(lat)
        if two_copies and not is_cond:
            noisy_rows += [(c, b, True, p, k, g, -1) for c, b, p, k, g in tokens]
            noisy_latents.append(lat)
        block += -(-n // stream.block_size)
        position += n
    if two_copies and not unread_clean and noisy_rows:
        # a noisy token of block b reads the clean copies of blocks < b only (and the switch head a last boundary's)
        last = noisy_rows[-1][1] + (1 if example[-1].boundary else 0)
        rows = [r for r in rows if r[1] < last]
        kept = collections.Counter(r[5] for r in rows)  # tokens kept per segment: a prefix of each
        latents = [lat[: kept[s]] for s, lat in enumerate(latents) if kept[s]]
    return rows + noisy_rows, latents + noisy_latents


def pack(
    examples: Sequence[Example],
    layout: SequenceLayout,
    *,
    two_copies: bool = True,
    row_length: int | None = None,
    unread_clean: bool = True,
) -> PackedBatch:
    """Pack examples into rows.

    row_length None: one example per row, padded to the longest. Otherwise each example, in order,
    goes to the first row with room for it (first fit; a new row when none has), so a row's examples
    still follow each other without padding; sample ids are the examples' indices. `unread_clean`
    False drops the clean copies no noisy token reads (training does not need them; see _example_tokens).
    """
    if not examples:
        raise ValueError("pack needs at least one example")
    tables = [_example_tokens(ex, layout, two_copies, unread_clean) for ex in examples]
    lengths = [len(rows) for rows, _ in tables]
    # where each example starts: (row, column)
    starts: list[tuple[int, int]] = []
    if row_length is None:
        starts = [(i, 0) for i in range(len(examples))]
        width = max(lengths)
    else:
        width, used = row_length, []
        for i, n in enumerate(lengths):
            if n > row_length:
                raise ValueError(f"example {i} has {n} tokens, more than row_length={row_length}; raise row_length")
            row = next((r for r, u in enumerate(used) if u + n <= row_length), len(used))
            if row == len(used):
                used.append(0)
            starts.append((row, used[row]))
            used[row] += n
    b = max(r for r, _ in starts) + 1
    flat_rows, flat_cols, sample_ids, fields = [], [], [], []
    for i, ((rows, _), (r, c)) in enumerate(zip(tables, starts)):
        n = len(rows)
        flat_rows += [r] * n
        flat_cols += range(c, c + n)
        sample_ids += [i] * n
        fields += rows
    r_idx, c_idx = torch.tensor(flat_rows), torch.tensor(flat_cols)
    cols = torch.tensor(fields, dtype=torch.long).T  # [7, M]: codec, block, noisy, position, cond, segment, switch label

    def scatter(values: Tensor, fill, dtype) -> Tensor:
        out = torch.full((b, width), fill, dtype=dtype)
        out[r_idx, c_idx] = values.to(dtype)
        return out

    codec = scatter(cols[0], 0, torch.long)
    sample = scatter(torch.tensor(sample_ids), -1, torch.long)
    first = examples[0][0].latents
    device, dtype = first.device, first.dtype
    values = torch.zeros(b, width, layout.dmax, dtype=dtype, device=device)
    latents = torch.cat([torch.nn.functional.pad(lat, (0, layout.dmax - lat.shape[1])) for _, lats in tables for lat in lats])
    values[r_idx.to(device), c_idx.to(device)] = latents.to(dtype)
    dims = torch.tensor(layout.dims)
    channel_mask = (torch.arange(layout.dmax)[None, None, :] < dims[codec][..., None]) & (sample >= 0)[..., None]
    meta = TokenMeta(sample, scatter(cols[1], 0, torch.long), scatter(cols[2], False, torch.bool), scatter(cols[3], 0, torch.long))
    return PackedBatch(
        values=values,
        codec=codec.to(device),
        meta=TokenMeta(*(x.to(device) for x in (meta.sample, meta.block, meta.noisy, meta.position))),
        cond=scatter(cols[4], False, torch.bool).to(device),
        segment=scatter(cols[5], -1, torch.long).to(device),
        t=torch.zeros(b, width, dtype=dtype, device=device),
        channel_mask=channel_mask.to(device),
        num_examples=len(examples),
        switch=scatter(cols[6], -1, torch.long).to(device) if any(seg.boundary for ex in examples for seg in ex) else None,
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


def task_examples(cond: Sequence[str], target: str, latents: Mapping[str, Sequence[Tensor]]) -> list[Example]:
    """Example i = the `cond` roles' i-th latents as cond segments, then the target role's i-th latents."""
    return [[Segment(r, latents[r][i], "cond") for r in cond] + [Segment(target, latents[target][i], "target")]
            for i in range(len(latents[target]))]


def drop_conditions(examples: Sequence[Example], p: float, generator: torch.Generator | None = None,
                    each: bool = False) -> list[Example]:
    """Classifier-free guidance training: drop each example's `cond` segments with probability p.

    Together (default): all of an example's conditions go at once, which trains the one unconditional
    variant that single-scale guidance uses. `each`: every cond segment is dropped on its own draw, which
    also trains the one-condition-dropped variants that guidance with one scale per condition uses."""
    if p <= 0:
        return list(examples)
    if not each:
        keep = torch.rand(len(examples), generator=generator) >= p
        return [ex if k else [s for s in ex if s.role != "cond"] or ex for ex, k in zip(examples, keep.tolist())]
    out = []
    for ex in examples:
        conds = [j for j, s in enumerate(ex) if s.role == "cond"]
        keep = (torch.rand(len(conds), generator=generator) >= p).tolist()
        dropped = {j for j, k in zip(conds, keep) if not k}
        out.append([s for j, s in enumerate(ex) if j not in dropped] or ex)
    return out
