"""Generation, the one path: `Pipeline.from_pretrained(run_dir).generate(...)` over the block loop below.

Block by block: prefill the context, integrate each new block, commit it at t = 0.

Follows Cola DLM's generation (COLA_DLM.md): the prompt is clean context in a KV cache; each new
block starts as Gaussian noise and is carried to data by an ODE solver over the prior's velocity,
with classifier-free guidance; the finished block is committed to the cache at t = 0. A block that
is partly given (a prompt ending inside it) keeps its given positions pinned to their clean latents
at t = 0 at every step ("clean repaint").

With `use_cache=False` every velocity evaluation recomputes the whole context instead; the two paths
agree to float precision, which the tests check.

Dimensions: R rows (samples x guidance variants), S samples, K tokens in the current block,
Lc context tokens, Dmax widest codec latent.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.flow import SOLVERS, guided_velocity, integrate
from latentbridge.plugins import Registries
from latentbridge.prior import PriorBackbone, TokenMeta
from latentbridge.runs import load_run
from latentbridge.sequence import Example, Segment, SequenceLayout, end_of_document, pack
from latentbridge.data.document import DocItem, as_document
from latentbridge.tasks import Task, document_roles, find_task, tasks_of


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


@dataclasses.dataclass
class GeneratedDocument:
    """A document Pipeline.generate_document wrote: `items[:prefix]` were given, the rest generated and decoded."""

    items: list[DocItem]
    prefix: int
    ended: bool
    """True when the prior's switch head ended it; False when the item budget (max_items) cut it."""

    @property
    def generated(self) -> list[DocItem]:
        return self.items[self.prefix :]


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


class Pipeline:
    """A trained run, ready to generate: the one generation path of latentbridge.

        pipe = Pipeline.from_pretrained("runs/demo")
        images = pipe.generate({"text": ["a frog above a lemon", "a handwritten digit seven"]}, target="image", guidance=3.0)
        captions = pipe.generate({"image": images}, target="text")
        more = pipe.generate(prompts=["a small dog"], target="text")          # text continuation

    The conditions (role -> items) and the target pick one of the run's tasks (`pipe.tasks`). Fixed-length
    targets (an image, fixed-length audio) are generated block by block to their length; variable-length
    targets (text) until their end marker or `max_tokens` latents, each continuing its `prompts` item if
    given (the prompt ends inside a block: its given positions are pinned, see generate_latents).
    Deterministic under `seed`, and each item depends only on `seed` and its place in the call, not on
    `batch_size` or the other items of its batch; a progress bar with `progress`. What guidance compares against is
    `sampling.unconditional` (see generate_latents). The CLI, the evaluators and the tests all generate through
    `generate`.
    """

    def __init__(self, cfg: ExperimentConfig, codecs: dict[str, Codec], prior: PriorBackbone, layout: SequenceLayout,
                 registries: Registries | None = None) -> None:
        self.cfg, self.codecs, self.prior, self.layout = cfg, codecs, prior, layout
        self.registries = registries
        self._compiled: nn.Module | None = None

    def set_sampling(self, steps: int | None = None, solver: str | None = None) -> Pipeline:
        """Generate with another number of steps per block or another solver than the run's config (None: keep)."""
        s = self.cfg.sampling
        if solver is not None:
            if solver not in SOLVERS:
                raise ConfigError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
            s.solver = solver
        if steps is not None:
            s.steps = steps
        return self

    def generation_prior(self) -> PriorBackbone:
        """The prior generation calls: the prior itself, or (sampling.compile) a torch.compile of it, made once and kept
        (the compiled code is reused by later calls; a prior replaced or moved is compiled again)."""
        if not self.cfg.sampling.compile:
            return self.prior
        if self._compiled is None or self._compiled._orig_mod is not self.prior:
            self._compiled = torch.compile(self.prior, dynamic=True)  # block lengths and cache sizes vary: dynamic shapes
        return self._compiled

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, registries: Registries | None = None) -> Pipeline:
        """The run's codecs and the EMA prior of its latest checkpoint (latentbridge.runs.load_run)."""
        run = load_run(run_dir, registries)
        return cls(run.cfg, run.codecs, run.prior, run.layout, run.registries)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Pipeline:
        """Move the prior and every codec to `device`; run the prior in `dtype` (e.g. torch.bfloat16 on a GPU). Codecs
        keep their own dtype: latents are cast where they cross between a codec and the prior. Returns self."""
        if device is not None:
            for codec in self.codecs.values():
                codec.to(device)
        self.prior.to(device=device, dtype=dtype)
        return self

    @property
    def tasks(self) -> list[Task]:
        """The run's tasks: what it can generate from what."""
        return tasks_of(self.cfg, self.registries, need_data=False)

    @torch.no_grad()
    def generate(self, conditions: Mapping[str, Sequence[Any]] | None = None, *, prompts: Sequence[Any] | None = None,
                 target: str | None = None, guidance: float | Sequence[float] | None = None, steps: int | None = None,
                 seed: int = 0, batch_size: int = 64, max_tokens: int | None = None, num: int | None = None,
                 progress: bool = False) -> list[Any]:
        """Generated items of the target role: one per condition item (or per prompt, or `num` of a task without
        conditions).

        `guidance`: one classifier-free scale, or one per condition (null: the config's sampling.guidance);
        `steps`: ODE steps per block (null: sampling.steps)."""
        conditions = dict(conditions or {})
        unknown = [r for r in conditions if r not in self.codecs]
        if unknown:
            raise ConfigError(f"conditions name role(s) {', '.join(unknown)}, which this run does not have "
                              f"(roles: {', '.join(self.codecs)}).")
        task = find_task(self.tasks, list(conditions), target)
        codec = self.codecs[task.target]
        spec = codec.latent_spec
        sizes = {r: len(v) for r, v in conditions.items()}
        if prompts is not None:
            sizes["prompts"] = len(prompts)
        if not sizes and num is not None and not task.cond:
            sizes["num"] = num
        if not sizes:
            raise ConfigError(f"generate: task {task.name} ({task.direction}) needs items to start from: pass its conditions, prompts, "
                              "or (a task without conditions) num.")
        if len(set(sizes.values())) != 1:
            raise ConfigError(f"generate: conditions and prompts must have one item per example each, got {sizes}")
        if prompts is not None and spec.fixed:
            raise ConfigError(f"generate: '{codec.name}' items have a fixed length and cannot be continued from prompts; pass conditions.")
        s = self.cfg.sampling
        if guidance is None:
            guidance = s.guidance[0] if len(s.guidance) == 1 else list(s.guidance)
        scales = [guidance] if isinstance(guidance, (int, float)) else list(guidance)
        if not scales or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) for g in scales):
            raise ConfigError(f"generate: guidance must be a finite number or a list of them (one per condition), got {guidance!r}.")
        for name, value in (("steps", steps), ("batch_size", batch_size), ("max_tokens", max_tokens), ("num", num)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"generate: {name} must be a whole number of at least 1, got {value!r}.")
        folded = self.cfg.train.objective == "distill" and self.cfg.train.teacher_guidance != 1.0
        if folded and any(float(g) != 1.0 for g in scales):
            warnings.warn(f"this student has its teacher's guidance {self.cfg.train.teacher_guidance} folded in (train.teacher_guidance); "
                          f"guidance {guidance} applies on top of it. Sample it at guidance 1.0.", stacklevel=2)
        per_condition = not isinstance(guidance, (int, float)) and len(guidance) > 1 and any(float(g) != 1.0 for g in guidance)
        if per_condition and len(task.cond) > 1 and self.cfg.train.cond_dropout_mode != "each":
            warnings.warn(f"guidance {list(guidance)}: one scale per condition compares against variants with one condition "
                          "dropped, which this run never trained (train.cond_dropout_mode: together drops all conditions at "
                          "once). Give one scale, or train with cond_dropout_mode: each.", stacklevel=2)
        kw = dict(steps=steps or s.steps, solver=s.solver, shift=s.shift, guidance=guidance, guidance_interval=s.guidance_interval,
                  unconditional=s.unconditional, seed=seed)
        n = next(iter(sizes.values()))
        prior = self.generation_prior()
        out: list[Any] = []
        for start in tqdm(range(0, n, batch_size), desc=f"generate {task.target}", disable=not progress, dynamic_ncols=True):
            stop_at = min(n, start + batch_size)
            size = stop_at - start
            lat = {r: self.codecs[r].encode_items(list(conditions[r][start:stop_at])).unbind() for r in task.cond}
            context = [[Segment(r, lat[r][i], "cond") for r in task.cond] for i in range(size)]
            if spec.fixed:
                z = generate_latents(prior, self.layout, context, task.target, spec.tokens_per_item, first_index=start, **kw)
                values = torch.stack(z)
                out += codec.decode(Latents(codec.name, values, torch.full((size,), values.shape[1])))
                continue
            if prompts is not None:
                prefix = codec.encode_prompt(list(prompts[start:stop_at]))
            else:  # from nothing: the decoder starts with an empty prefix
                prefix = Latents(codec.name, torch.zeros(size, 0, spec.dim), torch.zeros(size, dtype=torch.long))
            stream = codec.decoder_stream(prefix)
            examples = [ctx + ([Segment(task.target, z, "target")] if len(z) else []) for ctx, z in zip(context, prefix.unbind())]
            limit = max_tokens or spec.max_tokens or 4 * spec.block_size
            generate_latents(prior, self.layout, examples, task.target, limit, stop=stream.push, first_index=start,
                             whole_blocks=True, **kw)
            out += codec.check_decoded(stream.items(), size)
        return out


    def document_task(self) -> Task:
        """The run's document task, or a clear error when it has none."""
        found = [t for t in self.tasks if t.document]
        if not found:
            raise ConfigError("this run has no document task, so its prior cannot say which codec follows an item. Train with a "
                              "task `document: [roles...]` (docs/documents.md).")
        return found[0]

    def _document_prefixes(self, task: Task, docs: Sequence[Sequence[Any]]) -> tuple[list[Example], dict[str, str]]:
        """Documents (lists of (modality, value)) as examples of boundary target segments, encoded by their roles' codecs."""
        roles = document_roles(task, {r: self.codecs[r].modality for r in task.document})
        checked = [as_document(d, roles, f"document {i}") for i, d in enumerate(docs)]
        by_role: dict[str, list] = {}
        for doc in checked:
            for item in doc:
                by_role.setdefault(roles[item.modality], []).append(item.value)
        lat = {r: iter(self.codecs[r].encode_items(v).unbind()) for r, v in by_role.items()}
        return [[Segment(roles[it.modality], next(lat[roles[it.modality]]), "target", boundary=True) for it in doc]
                for doc in checked], roles

    @torch.no_grad()
    def document_switches(self, documents: Sequence[Sequence[Any]], batch_size: int = 64) -> list[list[str]]:
        """What the switch head says follows each item of each given document, read with the whole document before it
        (teacher forcing): the modality of the next item, or "end"."""
        task = self.document_task()
        end = end_of_document(self.layout)
        allowed = torch.full((end + 1,), float("-inf"))
        allowed[[self.layout.ids[r] for r in task.document] + [end]] = 0.0
        names = {self.layout.ids[r]: self.codecs[r].modality for r in task.document} | {end: "end"}
        prior, out = self.prior, []
        param = next(prior.parameters())
        for start in range(0, len(documents), batch_size):
            examples, _ = self._document_prefixes(task, documents[start : start + batch_size])
            packed = pack(examples, self.layout, two_copies=False)
            meta = TokenMeta(*(m.to(param.device) for m in (packed.meta.sample, packed.meta.block, packed.meta.noisy,
                                                             packed.meta.position)))
            x = packed.values.to(param.device, param.dtype)
            _, logits = prior(x, torch.zeros(packed.codec.shape, dtype=param.dtype, device=param.device),
                              packed.codec.to(param.device), meta, switch=True)
            choice = (logits.float().cpu() + allowed).argmax(-1)  # [B, L]
            at = packed.switch.cpu() >= 0
            for i in range(len(examples)):
                mine = at & (packed.meta.sample.cpu() == i)
                order = packed.meta.position.cpu()[mine].argsort()  # items in document order
                out.append([names[int(c)] for c in choice[mine][order]])
        return out

    @torch.no_grad()
    def generate_document(self, prefix_items: Sequence[Sequence[Any]], *, max_items: int = 6, guidance: float | None = None,
                          steps: int | None = None, seed: int = 0, batch_size: int = 32, max_tokens: int | None = None,
                          use_cache: bool = True, progress: bool = False) -> list[GeneratedDocument]:
        """Continue documents: each prefix is a list of items (DocItem or (modality, value)) of the document task's
        modalities; the prior generates item after item, switching codec when its switch head says so, until it
        chooses the end or `max_items` new items. Returns each whole document: its items (the prefix's, then the
        generated ones, decoded) as DocItems, how many came from the prefix, and whether the head ended it.

        `guidance`: one classifier-free scale against the block alone (null: the config's first sampling.guidance);
        `max_tokens`: the most latents of one variable-length item (text; null: its codec's max_tokens)."""
        task = self.document_task()
        roles = document_roles(task, {r: self.codecs[r].modality for r in task.document})
        docs = [as_document(d, roles, f"generate_document: prefix {i}") for i, d in enumerate(prefix_items)]
        s = self.cfg.sampling
        guidance = float(s.guidance[0] if guidance is None else guidance)
        lengths, streams = {}, {}
        for role in task.document:
            spec = self.codecs[role].latent_spec
            lengths[role] = spec.tokens_per_item if spec.fixed else (max_tokens or spec.max_tokens or 4 * spec.block_size)
            if spec.end == "marker":
                codec = self.codecs[role]
                streams[role] = lambda codec=codec, spec=spec: codec.decoder_stream(
                    Latents(codec.name, torch.zeros(1, 0, spec.dim), torch.zeros(1, dtype=torch.long)))
        prior = self.generation_prior()
        out: list[GeneratedDocument] = []
        for start in tqdm(range(0, len(docs), batch_size), desc="generate documents", disable=not progress, dynamic_ncols=True):
            part = docs[start : start + batch_size]
            prefixes, _ = self._document_prefixes(task, part)
            results = generate_documents(prior, self.layout, prefixes, lengths, allowed=list(task.document), streams=streams,
                                         max_items=max_items, steps=steps or s.steps, solver=s.solver, shift=s.shift,
                                         guidance=guidance, guidance_interval=s.guidance_interval, seed=seed, first_index=start,
                                         use_cache=use_cache)
            decoded: dict[tuple[int, int], Any] = {}
            for role in task.document:  # items that end by length: decoded together, per codec
                at = [(i, j) for i, r in enumerate(results) for j, g in enumerate(r.items) if g.role == role and g.value is None]
                if at:
                    codec = self.codecs[role]
                    values = codec.check_decoded(codec.decode(Latents.from_list(codec.name, [results[i].items[j].latents for i, j in at])),
                                                 len(at))
                    decoded.update(zip(at, values))
            for i, (doc, r) in enumerate(zip(part, results)):
                made = [DocItem(self.codecs[g.role].modality, g.value if g.value is not None else decoded[(i, j)])
                        for j, g in enumerate(r.items)]
                out.append(GeneratedDocument(list(doc) + made, len(doc), r.ended))
        return out


def write_generated(codec: Codec, items: Sequence[Any], directory: Path, labels: Sequence[Any] | None = None) -> list[Path]:
    """Generated items as files through the target codec's write_items (named by their conditions when those are text),
    in a directory of their own: what an earlier call left there is replaced, not mixed in."""
    import shutil

    names = [str(x)[:60] if isinstance(x, (str, int, float)) else f"{i:02d}" for i, x in enumerate(labels or range(len(items)))]
    if Path(directory).is_dir():
        shutil.rmtree(directory)
    try:
        return codec.write_items(list(items), directory, names)
    except NotImplementedError as err:
        raise ConfigError(str(err)) from None


def _accepts(codec: Codec, items: Sequence[Any]) -> bool:
    """Whether the codec takes these as its items (collates them), without naming a modality."""
    try:
        codec.collate(list(items))
    except Exception:  # any refusal of the codec's own collate: these are not its items
        return False
    return True


def sample_run(run_dir: str | Path, *, tasks: Sequence[str] | None = None, prompts: Sequence[Any] | None = None, n: int = 16,
               guidance_scales: Sequence[float] | None = None, out: str | Path | None = None,
               registries: Registries | None = None, progress: bool = False, steps: int | None = None,
               solver: str | None = None, document: bool = False, prefix_items: int = 1, max_items: int = 6) -> list[Path]:
    """`latentbridge sample`: generate each task of a run (or `tasks`) and write the items, never scoring them.

    From `prompts` (items of a task's one condition role, or text to continue for a task without conditions), else
    from the first n held-out examples of the task's data set (a task without conditions: n from nothing). Writes
    <out>/<task>/g<scale>/ through the target codec's write_items (out defaults to the run's samples/).

    With `document`, the run's document task instead: documents continued from the first `prefix_items` items of
    held-out documents (or from each prompt as a one-text-item prefix), at most `max_items` new items each, written
    as HTML pages (<out>/<task>/g<scale>/index.html and doc_NNN.html)."""
    from latentbridge.tasks import TaskMixture

    pipe = Pipeline.from_pretrained(run_dir, registries).set_sampling(steps, solver)
    if document:
        return _sample_documents(pipe, prompts, n, guidance_scales, Path(out) if out else Path(run_dir) / "samples", prefix_items,
                                 max_items, progress)
    everything = [t for t in pipe.tasks if not t.document]  # document tasks: `sample --document`
    known = {t.name: t for t in everything}
    unknown = [t for t in tasks or [] if t not in known]
    if unknown:
        raise ConfigError(f"--task {', '.join(unknown)}: this run's tasks are {', '.join(known)}")
    chosen = [known[t] for t in tasks] if tasks else everything
    out_dir = Path(out) if out else Path(run_dir) / "samples"
    mix = None if prompts else TaskMixture(chosen, pipe.cfg.seed, pipe.registries)  # held-out data, each data set loaded once
    written: list[Path] = []
    for task in chosen:
        conditions, given, num = None, None, None
        if prompts:
            if len(task.cond) > 1:
                continue  # a task of several conditions is not started from one list of prompts
            role = task.cond[0] if task.cond else task.target  # prompts are condition items, or text to continue
            if not _accepts(pipe.codecs[role], prompts):
                if tasks:
                    raise ConfigError(f"--prompt: the {role} codec of task {task.name} cannot read the prompts as its items.")
                continue  # prompts of another kind than this task takes (text prompts, an image condition)
            conditions, given = ({role: list(prompts)}, None) if task.cond else (None, list(prompts))
        elif task.cond:
            data = mix.source(task)
            raw = data.split("test", n)
            conditions = {r: raw[data.field(pipe.codecs[r].modality, r)] for r in task.cond}
        else:
            num = n
        labels = (list(conditions.values())[0] if conditions else given) or None
        for g in guidance_scales or pipe.cfg.eval.guidance_scales:
            items = pipe.generate(conditions, prompts=given, target=task.target, guidance=g, seed=pipe.cfg.seed, num=num,
                                  progress=progress)
            written += write_generated(pipe.codecs[task.target], items, out_dir / task.name / f"g{g:g}", labels)
    return written


def _sample_documents(pipe: Pipeline, prompts: Sequence[Any] | None, n: int, guidance_scales: Sequence[float] | None, out: Path,
                      prefix_items: int, max_items: int, progress: bool) -> list[Path]:
    from latentbridge.document_page import write_document_pages
    from latentbridge.tasks import TaskMixture

    task = pipe.document_task()
    modalities = {pipe.codecs[r].modality: r for r in task.document}
    if prompts:
        if "text" not in modalities:
            raise ConfigError(f"--prompt starts a document with a text item, but task {task.name} has no text role "
                              f"(its roles: {', '.join(task.document)}); leave out --prompt to start from held-out documents.")
        prefixes = [[DocItem("text", p)] for p in prompts]
    else:
        data = TaskMixture([task], pipe.cfg.seed, pipe.registries).source(task)
        docs = data.split("test", n)[data.field("document")]
        prefixes = [list(d)[:prefix_items] for d in docs]
    codecs = {m: pipe.codecs[r] for m, r in modalities.items()}
    written: list[Path] = []
    for g in guidance_scales or pipe.cfg.eval.guidance_scales[:1]:
        made = pipe.generate_document(prefixes, max_items=max_items, guidance=g, seed=pipe.cfg.seed, progress=progress)
        written += write_document_pages([(d.items, d.prefix, d.ended) for d in made], codecs, out / task.name / f"g{g:g}",
                                        title=f"{task.name} (guidance {g:g})")
    return written
