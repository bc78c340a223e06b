"""The sampling engine under `Pipeline`: the block loop of generation, on a prior and a sequence layout.

Block by block: prefill the context, integrate each new block, commit it at t = 0.

Follows Cola DLM's generation (COLA_DLM.md): the prompt is clean context in a KV cache; each new
block starts as Gaussian noise and is carried to data by an ODE solver over the prior's velocity,
with classifier-free guidance; the finished block is committed to the cache at t = 0. A block that
is partly given (a prompt ending inside it) keeps its given positions pinned to their clean latents
at t = 0 at every step ("clean repaint").

With `use_cache=False` every velocity evaluation recomputes the whole context instead; the two paths
agree to float precision, which the tests check.

This module works on latents only: `generate_latents` (targets of one codec stream) and `generate_documents`
(documents that switch codec by the prior's switch head). Loading a run, encoding conditions and decoding
results is latentbridge.pipeline's.

Dimensions: R rows (samples x guidance variants), S samples, K tokens in the current block,
Lc context tokens, Dmax widest codec latent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from latentbridge.errors import ConfigError
from latentbridge.flow import guided_velocity, integrate
from latentbridge.prior import PriorBackbone, TokenMeta
from latentbridge.sequence import Example, Segment, SequenceLayout, end_of_document, pack


class _Context:
    """Committed clean tokens, held as a KV cache or (for the uncached reference) as raw tokens."""

    def __init__(self, prior: PriorBackbone, use_cache: bool) -> None:
        self.prior = prior
        self.cache = prior.new_cache() if use_cache else None
        self.tokens: tuple[Tensor, Tensor, Tensor, TokenMeta] | None = None  # x, t, codec, meta

    def commit(self, x: Tensor, codec: Tensor, meta: TokenMeta, switch: bool = False) -> Tensor | None:
        """Keep clean tokens x [R, K, Dmax] in the context; with `switch`, return the prior's switch logits at them
        [R, K, classes] (what follows each, read with the whole context: documents)."""
        t = torch.zeros(codec.shape, dtype=x.dtype, device=x.device)
        if self.cache is not None:
            out = self.prior(x, t, codec, meta, cache=self.cache, commit=True, **({"switch": True} if switch else {}))
            return out[1] if switch else None
        if self.tokens is None:
            self.tokens = (x, t, codec, meta)
        else:
            px, pt, pc, pm = self.tokens
            self.tokens = (torch.cat([px, x], 1), torch.cat([pt, t], 1), torch.cat([pc, codec], 1), TokenMeta.cat([pm, meta]))
        if not switch:
            return None
        _, logits = self.prior(*self.tokens, switch=True)  # the uncached reference: the whole context again
        return logits[:, -x.shape[1]:]

    def velocity(self, x: Tensor, t: Tensor, codec: Tensor, meta: TokenMeta, step: Tensor | None = None) -> Tensor:
        jump = {} if step is None else {"step": step}  # only shortcut priors take a step span
        if self.cache is not None or self.tokens is None:
            return self.prior(x, t, codec, meta, cache=self.cache, **jump)
        px, pt, pc, pm = self.tokens
        k = x.shape[1]
        if step is not None:  # the committed context is clean: span 0
            jump = {"step": torch.cat([torch.zeros_like(pt), step], 1)}
        out = self.prior(torch.cat([px, x], 1), torch.cat([pt, t], 1), torch.cat([pc, codec], 1), TokenMeta.cat([pm, meta]),
                         **jump)
        return out[:, -k:]


UNCONDITIONAL = ("auto", "conditions", "block")


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The noise source of sample `index` of a generate call under `seed`: the same whatever else is in its batch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


def _guidance_variants(prompts: Sequence[Example], scales: Sequence[float], unconditional: str
                       ) -> tuple[list[Example], list[list[int]], list[bool]]:
    """Rows to run: each prompt in full, then per guidance scale != 1 the prompt's unconditional variant.

    Returns the rows, per scale the rows of its variant (one per prompt; [] where guidance is off) and per row
    whether it sees the current block alone (nothing of it is ever committed to the context).

    `unconditional`:
      conditions  the prompt without its `cond` segments (what training with train.cond_dropout learns); with
                  several scales, scale i drops the i-th `cond` segment. A prompt without conditions has no
                  unconditional variant: guidance is off for it (and costs nothing).
      block       the block being generated alone: conditions, prompt and earlier blocks all removed from
                  attention (Cola DLM's guidance for text). Where there is no context yet (a prompt shorter than
                  a block) the two rows agree, so guidance is off for that block, as Cola DLM switches it off.
      auto        conditions for prompts with `cond` segments, block for prompts without.
    """
    if unconditional not in UNCONDITIONAL:
        raise ConfigError(f"sampling.unconditional must be one of {', '.join(UNCONDITIONAL)}, got {unconditional!r}")
    rows = list(prompts)
    alone = [False] * len(rows)
    groups: list[list[int]] = []
    alone_rows: dict[int, int] = {}  # prompt -> its block-alone row, shared by all scales
    for i, s in enumerate(scales):
        if s == 1.0:
            groups.append([])
            continue
        variants = []
        for n, p in enumerate(prompts):
            conds = [j for j, seg in enumerate(p) if seg.role == "cond"]
            mode = unconditional if unconditional != "auto" else ("conditions" if conds else "block")
            if mode == "block":
                variants.append(alone_rows.get(n, ([], True)))
                continue
            drop = set(conds) if len(scales) == 1 else ({conds[i]} if i < len(conds) else set())
            variants.append(([seg for j, seg in enumerate(p) if j not in drop], False) if drop else None)
        if all(v is None for v in variants):  # nothing to drop for any prompt: guidance is off, no rows run
            groups.append([])
            continue
        idx = []
        for n, (p, v) in enumerate(zip(prompts, variants)):
            if isinstance(v, int):  # this prompt's block-alone row exists already
                idx.append(v)
                continue
            row, is_alone = v if v is not None else (list(p), False)  # the full prompt again: no guidance for it
            if is_alone:
                alone_rows[n] = len(rows)
            idx.append(len(rows))
            rows.append(row)
            alone.append(is_alone)
        groups.append(idx)
    return rows, groups, alone


def _prefill(ctx: _Context, layout: SequenceLayout, rows: list[Example], device, dtype, switch: bool = False):
    """Commit every row's context at t = 0 (one sample per row); return each row's next block and position (and with
    `switch`, the switch logits [R, classes] at each row's last token; zeros for an empty row)."""
    r_count = len(rows)
    next_block = torch.zeros(r_count, dtype=torch.long)
    next_pos = torch.zeros(r_count, dtype=torch.long)
    nonempty = [i for i, r in enumerate(rows) if r]
    if not nonempty:
        return (next_block, next_pos, torch.zeros(r_count, prior_switch_classes(ctx.prior))) if switch else (next_block, next_pos)
    packed = pack([rows[i] for i in nonempty], layout, two_copies=False)  # one example per row
    idx = torch.tensor(nonempty)
    length = packed.codec.shape[1]
    x = torch.zeros(r_count, length, layout.dmax, dtype=dtype)
    codec = torch.zeros(r_count, length, dtype=torch.long)
    sample = torch.full((r_count, length), -1, dtype=torch.long)
    block = torch.zeros(r_count, length, dtype=torch.long)
    position = torch.zeros(r_count, length, dtype=torch.long)
    valid = packed.meta.sample.cpu() >= 0
    x[idx] = packed.values.cpu().to(dtype)
    codec[idx] = packed.codec.cpu()
    sample[idx] = torch.where(valid, idx[:, None], -1)  # sample id = row
    block[idx] = packed.meta.block.cpu()
    position[idx] = packed.meta.position.cpu()
    noisy = torch.zeros(r_count, length, dtype=torch.bool)
    logits = ctx.commit(x.to(device), codec.to(device), TokenMeta(sample.to(device), block.to(device), noisy.to(device),
                                                                 position.to(device)), switch=switch)
    next_block[idx] = torch.where(valid, block[idx], -1).max(dim=1).values + 1
    next_pos[idx] = valid.sum(dim=1)
    if not switch:
        return next_block, next_pos
    last = torch.zeros(r_count, logits.shape[-1], dtype=logits.dtype, device=logits.device)
    last[idx] = logits[idx, (next_pos[idx] - 1).to(logits.device)]
    return next_block, next_pos, last


def prior_switch_classes(prior: nn.Module) -> int:
    return int(getattr(getattr(prior, "_orig_mod", prior), "switch_classes", 0))


@torch.no_grad()
def generate_latents(
    prior: PriorBackbone,
    layout: SequenceLayout,
    prompts: Sequence[Example],
    target: str,
    num_tokens: int,
    *,
    steps: int = 16,
    solver: str = "euler",
    shift: float = 1.0,
    guidance: float | Sequence[float] = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    unconditional: str = "auto",
    seed: int = 0,
    first_index: int = 0,
    whole_blocks: bool = False,
    use_cache: bool = True,
    stop: Callable[[Tensor], Tensor] | None = None,
    on_block: Callable[[int, Tensor], None] | None = None,
    noise: Callable[[int], Tensor] | None = None,
) -> list[Tensor]:
    """Generate `num_tokens` latents [n, D] of codec `target` after each prompt (fewer if `stop` ends it).

    A prompt is a list of segments (cond context, earlier targets). If its last segment is a target
    of codec `target`, generation continues that item: its full blocks are context, its partial last
    block is generated with the given positions pinned (clean repaint). `stop(block [S, K, D]) ->
    bool [S]` ends a sample after a block, for codecs whose items end by a marker. `on_block(i,
    block [S, K, D])` is called after each committed block (progress bars, timing). `noise(i)` replaces the starting
    noise of block i ([S, block size, D]; e.g. to replay another implementation's noise exactly).

    A sample never depends on the rest of its batch: sample i draws its noise from its own generator
    (`sample_generator(seed, first_index + i)`, a whole block of noise per block), and where samples' blocks
    differ in length the shorter ones are padded with tokens nothing attends to. With `whole_blocks` (items that
    end by a marker) every block is a whole block and the output is cut to `num_tokens` afterwards, so the
    block handed to `stop` holds only generated latents. `unconditional` picks what guidance compares against
    (see _guidance_variants).
    """
    scales = [float(guidance)] if isinstance(guidance, (int, float)) else [float(s) for s in guidance]
    if solver == "shortcut" and not getattr(prior, "takes_step", False):
        raise ConfigError("sampling.solver=shortcut jumps with a velocity averaged over each step: it needs a prior trained "
                          "with train.objective=shortcut (prior.step_conditioning). Use euler, heun or midpoint for this prior.")
    stream = layout.stream(target)
    cid, bs, dim = layout.ids[target], stream.block_size, stream.dim
    param = next(prior.parameters())
    device, dtype = param.device, param.dtype
    s_count = len(prompts)
    generators = [sample_generator(seed, first_index + i) for i in range(s_count)]

    given: list[Tensor] = []  # per sample: given tokens of the partial block to repaint
    context: list[Example] = []
    for p in prompts:
        p = list(p)
        if p and p[-1].role == "target" and p[-1].codec == target:
            prefix = p.pop().latents
            full = prefix.shape[0] // bs * bs
            if full:
                p.append(Segment(target, prefix[:full], "target"))
            given.append(prefix[full:])
        else:
            given.append(torch.zeros(0, dim))
        context.append(p)
    rows, groups, alone = _guidance_variants(context, scales, unconditional)
    row_sample = torch.tensor(list(range(s_count)) + _variant_samples(groups, len(rows) - s_count, s_count))
    r_count = len(rows)
    rs = row_sample.to(device)
    alone_rows = torch.tensor(alone, device=device)  # [R] rows that never keep context

    ctx = _Context(prior, use_cache)
    next_block, next_pos = _prefill(ctx, layout, rows, device, dtype)
    pins = torch.tensor([g.shape[0] for g in given])  # [S]
    produced = torch.zeros(s_count, dtype=torch.long)
    outputs: list[list[Tensor]] = [[] for _ in range(s_count)]
    done = torch.zeros(s_count, dtype=torch.bool)
    pad = layout.dmax - dim
    blocks_done = 0
    while bool((active := ~done & (produced < num_tokens)).any()):
        own = torch.full_like(pins, bs) if whole_blocks else torch.clamp(pins + num_tokens - produced, max=bs)  # [S] block lengths
        k = int(own[active].max())  # tokens in this block
        real = torch.arange(k)[None, :] < own[:, None]  # [S, K] False: padding of a shorter block
        pin_mask = (torch.arange(k)[None, :] < pins[:, None]).to(device)  # [S, K]
        pin_values = torch.zeros(s_count, k, dim, dtype=dtype, device=device)
        for s in range(s_count):
            n = int(pins[s])
            pin_values[s, :n] = given[s][:n].to(device, dtype)
        sample_ids = torch.arange(r_count)[:, None].repeat(1, k)
        meta = TokenMeta(
            sample=torch.where(real[row_sample], sample_ids, -1).to(device),
            block=next_block[:, None].repeat(1, k).to(device),
            noisy=torch.ones(r_count, k, dtype=torch.bool, device=device),
            position=(next_pos[:, None] + torch.arange(k)[None, :]).to(device),
        )
        codec = torch.full((r_count, k), cid, dtype=torch.long, device=device)
        pm = pin_mask[..., None]

        def velocity(x: Tensor, t: Tensor, span: Tensor | None = None) -> Tensor:  # x [S, K, D] -> v [S, K, D]
            xs = torch.nn.functional.pad(torch.where(pm, pin_values, x)[rs], (0, pad))  # [R, K, Dmax]
            tt = torch.where(pin_mask[rs], 0.0, t.to(dtype).expand(r_count, k))  # pinned tokens sit at t = 0
            step = None if span is None else torch.where(pin_mask[rs], 0.0, span.to(dtype).expand(r_count, k))
            v = ctx.velocity(xs, tt, codec, meta, step)[..., :dim]
            v_full = v[:s_count]
            v_without = [v[g] if g else v_full for g in groups]
            return torch.where(pm, 0.0, guided_velocity(v_full, v_without, scales, t, guidance_interval))

        if noise is None:  # [S, K, D]: a whole block per sample, whatever K is
            # drawn in fp32 whatever the prior's dtype: a sample is the same noise in fp32, bf16 or fp64
            start = torch.stack([torch.randn(bs, dim, generator=g)[:k] for g in generators]).to(device, dtype)
        else:
            start = noise(blocks_done).to(device, dtype)[:, :k]
        block = integrate(velocity, torch.where(pm, pin_values, start), steps=steps, solver=solver, shift=shift)
        block = torch.where(pm, pin_values, block)  # [S, K, D]
        block = torch.where(real[..., None].to(device), block, 0.0)
        kept = meta.sample.masked_fill(alone_rows[:, None], -1)  # block-alone rows keep no context
        clean = TokenMeta(kept, meta.block, torch.zeros_like(meta.noisy), meta.position)
        ctx.commit(torch.nn.functional.pad(block[rs], (0, pad)), codec, clean)
        for s in range(s_count):
            if active[s]:
                new = block[s][int(pins[s]) : int(own[s])]
                outputs[s].append(new)
                produced[s] += new.shape[0]
        if stop is not None:
            done |= stop(block).cpu()
        if on_block is not None:
            on_block(blocks_done, block)
        blocks_done += 1
        next_block += 1
        next_pos += torch.where(torch.tensor(alone), 0, own[row_sample])  # a block-alone row sees its block at 0.. each time
        pins = torch.zeros_like(pins)
    return [torch.cat(o)[:num_tokens] if o else torch.zeros(0, dim, dtype=dtype, device=device) for o in outputs]


@dataclasses.dataclass
class GeneratedItem:
    """One item a document generation produced: its codec stream (role), latents [n, D] and, for codecs that end by a
    marker, the value their decode stream gave (else None: decode the latents)."""

    role: str
    latents: Tensor
    value: Any = None


@dataclasses.dataclass
class DocumentResult:
    items: list[GeneratedItem]
    """The items generated after the prefix, in order."""
    ended: bool
    """True when the switch head chose the end of the document; False when the item budget stopped it."""


@torch.no_grad()
def generate_documents(
    prior: PriorBackbone,
    layout: SequenceLayout,
    prefixes: Sequence[Example],
    lengths: Mapping[str, int],
    *,
    allowed: Sequence[str] | None = None,
    streams: Mapping[str, Callable[[], Any]] | None = None,
    max_items: int = 8,
    steps: int = 16,
    solver: str = "euler",
    shift: float = 1.0,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    first_index: int = 0,
    use_cache: bool = True,
    on_block: Callable[[int], None] | None = None,
) -> list[DocumentResult]:
    """Continue each document prefix (an Example of complete items of any codec streams) item by item, the prior's
    switch head choosing what follows each item -- a codec stream of `allowed` (default: all) or the end -- until
    the end or `max_items` generated items.

    One context spans the whole document: the prefix is prefilled once, and every generated block, of whichever
    codec, is committed to it (a KV cache; `use_cache=False` recomputes the whole context instead, to the same result).
    The switch logits come from the commit of an item's last block, at its last token, as training reads them.
    Samples advance together block by block, each in its own codec: a block holds, per sample, up to its codec's block
    size of tokens (padding that nothing attends to elsewhere). `lengths[stream]`: tokens per item (fixed-length
    codecs), or the most tokens of one item (variable length); `streams[stream]()` makes a one-sample decode stream
    for codecs whose items end by a marker (text): its push(block [1, K, D]) says when the item has ended. Guidance
    compares against the block alone (Cola DLM's rule), whatever its codec. Each sample draws its noise from its own
    generator (`sample_generator(seed, first_index + i)`), only for its own blocks: a document does not depend on
    the rest of its batch.
    """
    classes = prior_switch_classes(prior)
    end = end_of_document(layout)
    if classes != end + 1:
        raise ConfigError(f"this prior's switch head has {classes} classes; documents over the streams {', '.join(layout.names)} "
                          f"need {end + 1} (train it with a document task).")
    if any(not p for p in prefixes):
        raise ConfigError("generate_documents: every document prefix needs at least one item (the switch head reads what "
                          "follows the last one).")
    if max_items < 1:
        raise ConfigError(f"generate_documents: max_items must be at least 1, got {max_items}")
    if solver == "shortcut":
        raise ConfigError("documents are generated with euler, heun or midpoint steps (sampling.solver)")
    streams = dict(streams or {})
    names = sorted(layout.ids, key=layout.ids.get)  # stream id -> name
    allowed = list(allowed) if allowed is not None else names
    missing = [r for r in allowed if r not in lengths]
    if missing:
        raise ConfigError(f"generate_documents: no item length for {', '.join(missing)}")
    keep = torch.full((classes,), float("-inf"))
    keep[[layout.ids[r] for r in allowed] + [end]] = 0.0
    param = next(prior.parameters())
    device, dtype = param.device, param.dtype
    dmax = layout.dmax
    s_count = len(prefixes)
    guided = float(guidance) != 1.0
    generators = [sample_generator(seed, first_index + i) for i in range(s_count)]
    rows: list[Example] = [list(p) for p in prefixes] + ([[] for _ in range(s_count)] if guided else [])
    r_count = len(rows)
    row_sample = torch.arange(r_count) % s_count
    rs = row_sample.to(device)
    alone = torch.arange(r_count) >= s_count  # block-alone rows: nothing of them is kept in the context
    ctx = _Context(prior, use_cache)
    next_block, next_pos, logits = _prefill(ctx, layout, rows, device, dtype, switch=True)

    results = [DocumentResult([], False) for _ in range(s_count)]
    current: list[str | None] = [None] * s_count
    blocks: list[list[Tensor]] = [[] for _ in range(s_count)]
    decoders: list[Any] = [None] * s_count

    def begin(s: int, row_logits: Tensor) -> None:
        choice = int((row_logits.float().cpu() + keep).argmax())
        current[s] = None
        if choice == end:
            results[s].ended = True
        elif len(results[s].items) < max_items:
            current[s] = names[choice]
            blocks[s] = []
            decoders[s] = streams[current[s]]() if current[s] in streams else None

    for s in range(s_count):
        begin(s, logits[s])
    done_blocks = 0
    while any(c is not None for c in current):
        own = torch.zeros(s_count, dtype=torch.long)  # this block's tokens per sample
        for s, c in enumerate(current):
            if c is not None:
                bs = layout.stream(c).block_size
                made = sum(b.shape[0] for b in blocks[s])
                own[s] = bs if decoders[s] is not None else min(bs, lengths[c] - made)
        k = int(own.max())
        cid = torch.tensor([layout.ids[c] if c is not None else 0 for c in current])  # [S]
        dims = torch.tensor([layout.stream(c).dim if c is not None else 0 for c in current])
        real = torch.arange(k)[None, :] < own[:, None]  # [S, K]
        channels = (torch.arange(dmax)[None, :] < dims[:, None])[:, None, :]  # [S, 1, Dmax]
        live = (real[..., None] & channels).to(device)  # [S, K, Dmax]: the sample's own tokens and channels
        meta = TokenMeta(
            sample=torch.where(real[row_sample], torch.arange(r_count)[:, None], -1).to(device),
            block=next_block[:, None].repeat(1, k).to(device),
            noisy=torch.ones(r_count, k, dtype=torch.bool, device=device),
            position=(next_pos[:, None] + torch.arange(k)[None, :]).to(device),
        )
        codec = cid[row_sample][:, None].repeat(1, k).to(device)

        def velocity(x: Tensor, t: Tensor) -> Tensor:  # x [S, K, Dmax] -> v [S, K, Dmax]
            v = ctx.velocity(x[rs], t.to(dtype).expand(r_count, k), codec, meta)
            v_without = [v[s_count:]] if guided else [v[:s_count]]
            return torch.where(live, guided_velocity(v[:s_count], v_without, [float(guidance)], t, guidance_interval), 0.0)

        start = torch.zeros(s_count, k, dmax)
        for s, c in enumerate(current):
            if c is not None:  # a whole block of the sample's own codec, drawn in fp32 from its own generator
                st = layout.stream(c)
                start[s, : int(own[s]), : st.dim] = torch.randn(st.block_size, st.dim, generator=generators[s])[: int(own[s])]
        block = integrate(velocity, start.to(device, dtype), steps=steps, solver=solver, shift=shift)
        block = torch.where(live, block, 0.0)
        kept = meta.sample.masked_fill(alone[:, None].to(device), -1)
        clean = TokenMeta(kept, meta.block, torch.zeros_like(meta.noisy), meta.position)
        logits = ctx.commit(block[rs], codec, clean, switch=True)  # [R, K, classes]
        for s, c in enumerate(current):
            if c is None:
                continue
            n, st = int(own[s]), layout.stream(c)
            new = block[s, :n, : st.dim]
            blocks[s].append(new)
            made = sum(b.shape[0] for b in blocks[s])
            finished = made >= lengths[c]
            if decoders[s] is not None:
                finished = bool(decoders[s].push(new[None])[0]) or finished
            if finished:
                z = torch.cat(blocks[s])[: lengths[c]]
                value = decoders[s].items()[0] if decoders[s] is not None else None
                results[s].items.append(GeneratedItem(c, z, value))
                begin(s, logits[s, n - 1])
        if on_block is not None:
            on_block(done_blocks)
        done_blocks += 1
        next_block += 1
        next_pos += torch.where(alone, 0, own[row_sample])
    return results


def _variant_samples(groups: list[list[int]], count: int, s_count: int) -> list[int]:
    """The sample of each variant row (rows s_count.. in order), from the groups that index them."""
    out = [-1] * count
    for g in groups:
        for s, r in enumerate(g):
            if r >= s_count:
                out[r - s_count] = s
    return out
