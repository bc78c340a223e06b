"""Block-by-block generation: prefill the context, integrate each new block, commit it at t = 0.

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

from typing import Callable, Sequence

import torch
from torch import Tensor

from latentbridge.flow import guided_velocity, integrate
from latentbridge.prior import BlockCausalDiT, TokenMeta
from latentbridge.sequence import Example, Segment, SequenceLayout, pack


class _Context:
    """Committed clean tokens, held as a KV cache or (for the uncached reference) as raw tokens."""

    def __init__(self, prior: BlockCausalDiT, use_cache: bool) -> None:
        self.prior = prior
        self.cache = prior.new_cache() if use_cache else None
        self.tokens: tuple[Tensor, Tensor, Tensor, TokenMeta] | None = None  # x, t, codec, meta

    def commit(self, x: Tensor, codec: Tensor, meta: TokenMeta) -> None:
        t = torch.zeros(codec.shape, dtype=x.dtype, device=x.device)
        if self.cache is not None:
            self.prior(x, t, codec, meta, cache=self.cache, commit=True)
        elif self.tokens is None:
            self.tokens = (x, t, codec, meta)
        else:
            px, pt, pc, pm = self.tokens
            self.tokens = (torch.cat([px, x], 1), torch.cat([pt, t], 1), torch.cat([pc, codec], 1), TokenMeta.cat([pm, meta]))

    def velocity(self, x: Tensor, t: Tensor, codec: Tensor, meta: TokenMeta) -> Tensor:
        if self.cache is not None or self.tokens is None:
            return self.prior(x, t, codec, meta, cache=self.cache)
        px, pt, pc, pm = self.tokens
        k = x.shape[1]
        out = self.prior(torch.cat([px, x], 1), torch.cat([pt, t], 1), torch.cat([pc, codec], 1), TokenMeta.cat([pm, meta]))
        return out[:, -k:]


def _guidance_variants(prompts: Sequence[Example], scales: Sequence[float]) -> tuple[list[Example], list[list[int]]]:
    """Rows to run: each prompt in full, then (per condition with scale != 1) the prompt without it.

    With one scale, the condition is every `cond` segment at once (the usual unconditional pass);
    with several, scale i drops the i-th `cond` segment.
    """
    rows = list(prompts)
    groups: list[list[int]] = []  # per guidance scale: the rows of the variant, one per prompt
    for i, s in enumerate(scales):
        if s == 1.0:
            groups.append([])
            continue
        idx = []
        for p in prompts:
            conds = [j for j, seg in enumerate(p) if seg.role == "cond"]
            drop = set(conds) if len(scales) == 1 else ({conds[i]} if i < len(conds) else set())
            variant = [seg for j, seg in enumerate(p) if j not in drop]
            idx.append(len(rows))
            rows.append(variant)
        groups.append(idx)
    return rows, groups


def _prefill(ctx: _Context, layout: SequenceLayout, rows: list[Example], device, dtype) -> tuple[Tensor, Tensor]:
    """Commit every row's context at t = 0 (one sample per row); return each row's next block and position."""
    r_count = len(rows)
    next_block = torch.zeros(r_count, dtype=torch.long)
    next_pos = torch.zeros(r_count, dtype=torch.long)
    nonempty = [i for i, r in enumerate(rows) if r]
    if not nonempty:
        return next_block, next_pos
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
    ctx.commit(x.to(device), codec.to(device), TokenMeta(sample.to(device), block.to(device), noisy.to(device), position.to(device)))
    next_block[idx] = torch.where(valid, block[idx], -1).max(dim=1).values + 1
    next_pos[idx] = valid.sum(dim=1)
    return next_block, next_pos


@torch.no_grad()
def generate_latents(
    prior: BlockCausalDiT,
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
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop: Callable[[Tensor], Tensor] | None = None,
    on_block: Callable[[int, Tensor], None] | None = None,
) -> list[Tensor]:
    """Generate `num_tokens` latents [n, D] of codec `target` after each prompt (fewer if `stop` ends it).

    A prompt is a list of segments (cond context, earlier targets). If its last segment is a target
    of codec `target`, generation continues that item: its full blocks are context, its partial last
    block is generated with the given positions pinned (clean repaint). `stop(block [S, K, D]) ->
    bool [S]` ends a sample after a block, for codecs whose items end by a marker. `on_block(i,
    block [S, K, D])` is called after each committed block (progress bars, timing).
    """
    scales = [float(guidance)] if isinstance(guidance, (int, float)) else [float(s) for s in guidance]
    stream = layout.stream(target)
    cid, bs, dim = layout.ids[target], stream.block_size, stream.dim
    param = next(prior.parameters())
    device, dtype = param.device, param.dtype
    s_count = len(prompts)

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
    rows, groups = _guidance_variants(context, scales)
    row_sample = torch.tensor(list(range(s_count)) + [s for g in groups if g for s in range(s_count)])
    r_count = len(rows)
    rs = row_sample.to(device)

    ctx = _Context(prior, use_cache)
    next_block, next_pos = _prefill(ctx, layout, rows, device, dtype)
    pins = torch.tensor([g.shape[0] for g in given])  # [S]
    produced = torch.zeros(s_count, dtype=torch.long)
    outputs: list[list[Tensor]] = [[] for _ in range(s_count)]
    done = torch.zeros(s_count, dtype=torch.bool)
    pad = layout.dmax - dim
    blocks_done = 0
    while bool((active := ~done & (produced < num_tokens)).any()):
        k = int(torch.clamp(pins + num_tokens - produced, max=bs)[active].max())  # tokens in this block
        pin_mask = (torch.arange(k)[None, :] < pins[:, None]).to(device)  # [S, K]
        pin_values = torch.zeros(s_count, k, dim, dtype=dtype, device=device)
        for s in range(s_count):
            n = int(pins[s])
            pin_values[s, :n] = given[s][:n].to(device, dtype)
        meta = TokenMeta(
            sample=torch.arange(r_count, device=device)[:, None].repeat(1, k),
            block=next_block[:, None].repeat(1, k).to(device),
            noisy=torch.ones(r_count, k, dtype=torch.bool, device=device),
            position=(next_pos[:, None] + torch.arange(k)[None, :]).to(device),
        )
        codec = torch.full((r_count, k), cid, dtype=torch.long, device=device)
        pm = pin_mask[..., None]

        def velocity(x: Tensor, t: Tensor) -> Tensor:  # x [S, K, D] -> v [S, K, D]
            xs = torch.nn.functional.pad(torch.where(pm, pin_values, x)[rs], (0, pad))  # [R, K, Dmax]
            tt = torch.where(pin_mask[rs], 0.0, t.to(dtype).expand(r_count, k))  # pinned tokens sit at t = 0
            v = ctx.velocity(xs, tt, codec, meta)[..., :dim]
            v_full = v[:s_count]
            v_without = [v[g] if g else v_full for g in groups]
            return torch.where(pm, 0.0, guided_velocity(v_full, v_without, scales, t, guidance_interval))

        noise = torch.randn(s_count, k, dim, generator=generator, dtype=dtype).to(device)
        block = integrate(velocity, torch.where(pm, pin_values, noise), steps=steps, solver=solver, shift=shift)
        block = torch.where(pm, pin_values, block)  # [S, K, D]
        clean = TokenMeta(meta.sample, meta.block, torch.zeros_like(meta.noisy), meta.position)
        ctx.commit(torch.nn.functional.pad(block[rs], (0, pad)), codec, clean)
        for s in range(s_count):
            if active[s]:
                new = block[s][~pin_mask[s]]
                outputs[s].append(new)
                produced[s] += new.shape[0]
        if stop is not None:
            done |= stop(block).cpu()
        if on_block is not None:
            on_block(blocks_done, block)
        blocks_done += 1
        next_block += 1
        next_pos += k
        pins = torch.zeros_like(pins)
    return [torch.cat(o)[:num_tokens] if o else torch.zeros(0, dim, dtype=dtype, device=device) for o in outputs]


@torch.no_grad()
def continue_items(
    prior: BlockCausalDiT,
    layout: SequenceLayout,
    codec,
    role: str,
    prompts: Sequence,
    max_tokens: int,
    *,
    conditions: Sequence[Example] | None = None,
    steps: int = 16,
    solver: str = "euler",
    shift: float = 1.0,
    guidance: float | Sequence[float] = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_block: Callable[[int, Tensor], None] | None = None,
) -> list:
    """Continue each prompt item of codec `codec` (stream `role`) block by block until it ends or
    `max_tokens` new latents are made; returns the decoded continuations.

    The prompt is encoded with `codec.encode_prompt` (so it ends on a latent boundary), becomes the
    last, partly given target segment of the example (after `conditions[i]`, if any), and the
    codec's decoder stream decodes each new block and says when an item has ended (its end marker).
    """
    prefix = codec.encode_prompt(list(prompts))
    stream = codec.decoder_stream(prefix)
    examples = []
    for i, latents in enumerate(prefix.unbind()):
        cond = list(conditions[i]) if conditions is not None else []
        examples.append([*cond, Segment(role, latents, "target")])
    generate_latents(prior, layout, examples, role, max_tokens, steps=steps, solver=solver, shift=shift, guidance=guidance,
                     guidance_interval=guidance_interval, generator=generator, use_cache=use_cache, stop=stream.push,
                     on_block=on_block)
    return stream.items()


class Pipeline:
    """A trained run, ready to generate: `Pipeline.from_pretrained(run_dir).generate(...)`.

        pipe = Pipeline.from_pretrained("runs/joint")
        images = pipe.generate({"text": ["a big owl", "a handwritten digit seven"]}, target="image", guidance=2.0, seed=0)
        captions = pipe.generate({"image": images}, target="text")
        waves = pipe.generate({"text": ["harbour", "Oslo"]}, target="speech")        # 16 kHz float32 numpy
        words = pipe.generate({"speech": waves}, target="text")
        more = pipe.generate(prompts=["a small dog"], target="text")                  # text continuation

    The conditions (role -> items) and the target pick one of the run's tasks (`pipe.tasks`). Fixed-length
    targets are generated to their length; text continues each prompt (or starts from nothing) until its
    end marker. Deterministic under `seed`; batched (`batch_size`); a progress bar with `progress`.
    """

    def __init__(self, cfg, codecs: dict, prior: BlockCausalDiT, layout: SequenceLayout) -> None:
        self.cfg, self.codecs, self.prior, self.layout = cfg, codecs, prior, layout

    @classmethod
    def from_pretrained(cls, run_dir) -> Pipeline:
        from latentbridge.experiments.common import load_run

        cfg, codecs, prior, layout = load_run(run_dir)
        return cls(cfg, codecs, prior, layout)

    @property
    def tasks(self) -> list:
        """The run's tasks (latentbridge.tasks.Task): what it can generate from what."""
        from latentbridge.tasks import tasks_of

        return tasks_of(self.cfg)

    @property
    def target(self) -> str:
        """The generated role when the run has one task (else the first task's)."""
        return self.tasks[0].target

    def generate(self, conditions: dict[str, Sequence] | None = None, *, prompts: Sequence | None = None, target: str | None = None,
                 steps: int | None = None, guidance: float = 1.0, seed: int = 0, batch_size: int = 64,
                 max_tokens: int | None = None, progress: bool = False) -> list:
        """Generated items of the target role: one per condition item (or per prompt, for text targets)."""
        from latentbridge.errors import ConfigError
        from latentbridge.experiments.multimodal import generate

        unknown = [r for r in (conditions or {}) if r not in self.codecs]
        if unknown:
            raise ConfigError(f"conditions name role(s) {', '.join(unknown)}, which this run does not have "
                              f"(roles: {', '.join(self.codecs)}).")
        cfg = self.cfg
        if steps is not None:
            import copy

            cfg = copy.deepcopy(cfg)
            cfg.sampling.steps = steps
        return generate(cfg, self.codecs, self.prior, self.layout, conditions, target=target, prompts=prompts, guidance=guidance,
                        seed=seed, batch_size=batch_size, max_tokens=max_tokens, progress=progress)
