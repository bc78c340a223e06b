"""The prior's training objective: pack examples in the two-copy layout, noise one t per block, regress the velocity.

This is where sequence layout, flow matching and the network meet (ARCHITECTURE.md §2: only
train/, pipeline.py and evaluate/ wire the pieces).

The randomness of a step (condition dropout, the noise and the time of every target block) is drawn
per example, in example order, before packing. So a global batch split across processes sees
exactly the noise it would see in one process, whatever the packing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from latentbridge.flow import TimeSampler, flow_matching_sums, interpolate, velocity_target
from latentbridge.prior import PriorBackbone
from latentbridge.sequence import Example, SequenceLayout, drop_conditions, pack


@dataclasses.dataclass
class BatchNoise:
    """The randomness of a batch's target tokens, in example order (the order the noisy copies pack in)."""

    eps: Tensor
    """[T, Dmax] Gaussian noise of every target token (channels past a codec's width are zero)."""
    t: Tensor
    """[T] flow time of every target token, constant within each block."""
    offsets: list[int]
    """Example i owns tokens offsets[i]:offsets[i + 1]."""
    d: Tensor | None = None
    """[T] objective shortcut: per token, half the jump its block trains self-consistency for (0: flow matching)."""

    @classmethod
    def cat(cls, parts: Sequence[BatchNoise]) -> BatchNoise:
        """The noise of several batches' examples, one after another."""
        offsets, base = [0], 0
        for p in parts:
            offsets += [base + o for o in p.offsets[1:]]
            base += p.offsets[-1]
        dmax = max((p.eps.shape[1] for p in parts), default=0)
        d = torch.cat([p.d for p in parts]) if parts and all(p.d is not None for p in parts) else None
        return cls(torch.cat([p.eps for p in parts]) if parts else torch.zeros(0, dmax),
                   torch.cat([p.t for p in parts]) if parts else torch.zeros(0), offsets, d)

    def __getitem__(self, sl: slice) -> BatchNoise:
        """The noise of a contiguous run of examples (e.g. one process's share of the global batch)."""
        start, stop, _ = sl.indices(len(self.offsets) - 1)
        a, b = self.offsets[start], self.offsets[stop]
        return BatchNoise(self.eps[a:b], self.t[a:b], [o - a for o in self.offsets[start : stop + 1]],
                          None if self.d is None else self.d[a:b])


def draw_noise(examples: Sequence[Example], layout: SequenceLayout, samplers: Mapping[str, TimeSampler],
               generator: torch.Generator | None = None, shortcut: tuple[float, int] | None = None) -> BatchNoise:
    """One t per target block from its codec's sampler and Gaussian eps per target token, drawn per codec in one go.

    `shortcut` (fraction, finest): afterwards, a share `fraction` of the target blocks is chosen for self-consistency
    of jumps; such a block gets a jump 2d = 2^-j (j uniform in 0 .. log2(finest) - 1) and a time t = k 2d on that
    grid (k uniform in 1 .. 1/(2d)), replacing the sampler's t; the others keep d = 0 (flow matching). Drawn after
    the rest, so the flow objective's draws are unchanged."""
    noise = _draw_noise(examples, layout, samplers, generator)
    if shortcut is not None:
        noise.d = _draw_jumps(noise, examples, layout, generator, *shortcut)
    return noise


def _draw_jumps(noise: BatchNoise, examples: Sequence[Example], layout: SequenceLayout, generator: torch.Generator | None,
                fraction: float, finest: int) -> Tensor:
    levels = max(1, int(math.log2(finest)))
    block_of: list[int] = []  # each target token's block, numbered over the batch
    blocks = 0
    for ex in examples:
        for seg in ex:
            if seg.role == "target":
                bs = layout.streams[seg.codec].block_size
                n = seg.latents.shape[0]
                block_of += [blocks + j // bs for j in range(n)]
                blocks += -(-n // bs)
    chosen = torch.rand(blocks, generator=generator) < fraction
    jump = 2.0 ** -torch.randint(0, levels, (blocks,), generator=generator).float()  # 2d in {1, 1/2, .., 2/finest}
    k = (torch.rand(blocks, generator=generator) * (1.0 / jump)).floor() + 1  # 1 .. 1/(2d)
    idx = torch.tensor(block_of, dtype=torch.long)
    d = torch.where(chosen, jump / 2, 0.0)[idx]
    noise.t = torch.where(chosen[idx], (k * jump)[idx], noise.t)
    return d


def _draw_noise(examples: Sequence[Example], layout: SequenceLayout, samplers: Mapping[str, TimeSampler],
                generator: torch.Generator | None = None) -> BatchNoise:
    if len(examples) == 1:
        targets = [seg for seg in examples[0] if seg.role == "target"]
        if len(targets) == 1:  # one example with one target segment (the trainer's per-example draw): the same draws, fast
            seg = targets[0]
            cid, n = layout.ids[seg.codec], seg.latents.shape[0]
            bs, dim = layout.streams[seg.codec].block_size, layout.dims[cid]
            t = samplers[seg.codec].sample(-(-n // bs), generator).float().repeat_interleave(bs)[:n]
            eps = torch.zeros(n, layout.dmax)
            eps[:, :dim] = torch.randn(n, dim, generator=generator)
            return BatchNoise(eps, t, [0, n])
    token_codec: list[int] = []
    token_block: list[int] = []  # index of the token's block among its codec's blocks in this batch
    blocks_seen = [0] * len(layout.names)
    offsets = [0]
    for ex in examples:
        for seg in ex:
            if seg.role != "target":
                continue
            cid = layout.ids[seg.codec]
            bs = layout.streams[seg.codec].block_size
            n = seg.latents.shape[0]
            token_codec += [cid] * n
            token_block += [blocks_seen[cid] + j // bs for j in range(n)]
            blocks_seen[cid] += -(-n // bs)
        offsets.append(len(token_codec))
    codec_of = torch.tensor(token_codec, dtype=torch.long)
    block_of = torch.tensor(token_block, dtype=torch.long)
    eps = torch.zeros(len(token_codec), layout.dmax)
    t = torch.zeros(len(token_codec))
    for name, cid in layout.ids.items():
        if not blocks_seen[cid]:
            continue
        sel = codec_of == cid
        dim = layout.dims[cid]
        t[sel] = samplers[name].sample(blocks_seen[cid], generator).float()[block_of[sel]]
        eps[sel, :dim] = torch.randn(int(sel.sum()), dim, generator=generator)
    return BatchNoise(eps, t, offsets)


def switch_classes(prior: torch.nn.Module) -> int:
    """The switch head's size of a prior, also when wrapped (DDP, FSDP, torch.compile)."""
    for _ in range(4):
        if isinstance(prior, PriorBackbone):
            return prior.switch_classes
        prior = getattr(prior, "module", None) or getattr(prior, "_orig_mod", None)
        if prior is None:
            return 0
    return 0


def prior_loss(
    prior: PriorBackbone,
    layout: SequenceLayout,
    examples: Sequence[Example],
    samplers: Mapping[str, TimeSampler] | None = None,
    *,
    noise: BatchNoise | None = None,
    cond_dropout: float = 0.0,
    row_length: int | None = None,
    generator: torch.Generator | None = None,
    clean_grad: bool = False,
    unread_clean: bool = False,
    mean_count: Callable[[Tensor], Tensor] | None = None,
    teacher: PriorBackbone | None = None,
    teacher_substeps: int = 8,
    teacher_guidance: float = 1.0,
    loss_weights: Mapping[str, float] | None = None,
    switch_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Flow-matching loss on the noisy copies: {"loss": total, "loss/<codec>": per codec stream}.

    Examples with `boundary` segments (documents) also train the prior's switch head: cross-entropy of what follows
    each such segment (the next segment's codec, or the end) read at the clean copy of its last token, added to the
    total with `switch_weight`; "switch" and "switch_acc" report it.

    With `noise.d` (draw_noise(shortcut=...)) it is the shortcut objective: blocks with d > 0 regress, at jump 2d,
    the mean of the network's own two jumps of d (computed without gradient), the others flow-match at jump 0.
    With a `teacher` (a frozen flow prior) blocks with d > 0 regress instead the mean velocity of the teacher's
    `teacher_substeps` Euler steps over [t - 2d, t] (distillation); with `teacher_guidance` g != 1 the teacher's
    velocity is classifier-free guided, v_without + g (v - v_without), v_without from each example with its
    conditions removed (guidance folded into the student, which then samples at guidance 1 in one pass).

    Pass `noise` (from draw_noise, after condition dropout) to fix the step's randomness; otherwise
    dropout and noise are drawn here from `generator`. With `clean_grad` False the clean history is
    stop-gradient (Cola DLM's joint stage): gradients reach the latents only through the noisy copy.
    The clean copies no noisy token reads (each example's last target block) are left out of the
    packed rows -- a third of the tokens when the target is one block -- unless `unread_clean`.

    `loss_weights` (codec name -> weight, default 1) scale the squared errors of that codec's tokens in the total
    "loss" (the per-codec "loss/<codec>" figures stay unweighted, comparable across runs).

    Each loss is a sum of squared errors over target tokens and channels divided by their count. With several
    processes each holding part of a global batch, pass `mean_count`: it maps this process's counts to the mean
    count per process over all of them (an all-reduce / world size). Then every process divides its sum by the
    same number, and the mean DDP takes over processes is the loss of the whole batch per token -- not a mean of
    per-process means, which weights a process's tokens by how few it holds.
    """
    if noise is None:
        examples = drop_conditions(examples, cond_dropout, generator)
        noise = draw_noise(examples, layout, samplers, generator)
    packed = pack(examples, layout, two_copies=True, row_length=row_length, unread_clean=unread_clean)
    z0 = packed.values  # [B, L, Dmax]
    noisy = packed.meta.noisy & packed.valid  # [B, L]
    eps = torch.zeros_like(z0)
    t = torch.zeros_like(packed.t)
    # noise comes in example order; rows may hold examples out of order (first-fit packing)
    rows, cols = noisy.nonzero(as_tuple=True)
    order = torch.sort(packed.meta.sample[rows, cols], stable=True).indices
    rows, cols = rows[order], cols[order]
    eps[rows, cols] = noise.eps.to(z0)
    t[rows, cols] = noise.t.to(t)
    clean = z0 if clean_grad else z0.detach()
    x = torch.where(noisy[..., None], interpolate(z0, eps, t), clean)
    target = velocity_target(z0, eps)
    labels = packed.switch  # [B, L] or None
    # a prior with a switch head always runs it, also on a batch without documents (one process's slice of a mixture
    # may hold none): every process then computes the same terms, and DDP sees every parameter used
    use_head = labels is not None or switch_classes(prior) > 0
    logits = None

    def run(*args, **kw) -> Tensor:  # the prior's velocity; with documents, also keeps the switch logits
        nonlocal logits
        if not use_head:
            return prior(*args, **kw)
        v, logits = prior(*args, switch=True, **kw)
        return v

    if noise.d is None:
        pred = run(x, t, packed.codec, packed.meta)
    else:  # shortcut: self-consistency blocks regress the mean of two jumps of d (no gradient) with one jump of 2d
        d = torch.zeros_like(t)
        d[rows, cols] = noise.d.to(t)
        jumping = (d > 0)[..., None]  # [B, L, 1]
        if teacher is not None and bool(jumping.any()):
            velocity = _teacher_velocity(teacher, packed, (rows, cols), examples, layout, teacher_guidance,
                                         row_length=row_length, unread_clean=unread_clean)
            with torch.no_grad():  # the teacher's ODE over each jump: Euler steps of 2d / n
                h = (2 * d / teacher_substeps)[..., None]
                y, tau = x.detach(), t
                for _ in range(teacher_substeps):
                    y = torch.where(jumping, y - h * velocity(y, tau), y)
                    tau = torch.where(jumping[..., 0], tau - h[..., 0], tau)
                target = torch.where(jumping, ((x.detach() - y) / (2 * d[..., None]).clamp_min(1e-12)).to(target.dtype), target)
        elif bool(jumping.any()):
            with torch.no_grad():
                first = prior(x.detach(), t, packed.codec, packed.meta, step=d)
                moved = torch.where(jumping, x.detach() - d[..., None] * first, x.detach())
                second = prior(moved, torch.where(jumping[..., 0], t - d, t), packed.codec, packed.meta, step=d)
                target = torch.where(jumping, 0.5 * (first + second).to(target.dtype), target)
        pred = run(x, t, packed.codec, packed.meta, step=2 * d)
    mask = packed.loss_mask
    masks = {"loss": mask}
    if len(layout.names) > 1:
        masks.update({f"loss/{name}": mask & (packed.codec == cid) for name, cid in layout.ids.items()})
    token_weight = None
    if loss_weights and any(float(w) != 1.0 for w in loss_weights.values()):
        by_id = torch.ones(max(layout.ids.values()) + 1)
        for name, w in loss_weights.items():
            by_id[layout.ids[name]] = float(w)
        token_weight = by_id.to(packed.codec.device)[packed.codec]  # [B, L]
    sums, counts = [], []
    for name, m in masks.items():
        with contextlib.nullcontext() if name == "loss" else torch.no_grad():
            total, count = flow_matching_sums(pred, target, m, packed.channel_mask, token_weight if name == "loss" else None)
        sums.append(total)
        counts.append(count)
    if use_head:
        at = labels >= 0 if labels is not None else torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        if bool(at.any()):
            ce = torch.nn.functional.cross_entropy(logits[at].float(), labels[at], reduction="sum")
        else:
            ce = logits.float().sum() * 0.0  # nothing to classify here: a zero that keeps the head in the graph
        hits = (logits[at].argmax(-1) == labels[at]).sum().to(ce.dtype).detach() if bool(at.any()) else ce.detach() * 0
        counts += [at.sum().to(counts[0].dtype)]
    counts_t = torch.stack(counts)
    if mean_count is not None:
        counts_t = mean_count(counts_t)
    out = {}
    for (name, m), total, count in zip(masks.items(), sums, counts_t):
        if name == "loss" or bool(m.any()) or mean_count is not None:  # a codec absent here may be present elsewhere
            out[name] = total / count.clamp_min(1.0)
    if use_head:
        n = counts_t[-1].clamp_min(1.0)
        out["switch"], out["switch_acc"] = ce / n, hits / n
        out["loss"] = out["loss"] + switch_weight * out["switch"]
    return out


def _teacher_velocity(teacher: PriorBackbone, packed, noisy_at: tuple[Tensor, Tensor], examples: Sequence[Example],
                      layout: SequenceLayout, guidance: float, *, row_length: int | None,
                      unread_clean: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """The distillation teacher's velocity on the packed batch: velocity(x, t) -> [B, L, D].

    With guidance g != 1 it is classifier-free guided like generation's: the examples are packed a second time with
    their conditions removed (the variant condition dropout trained), every target token's state and time are copied
    into that packing (`noisy_at`: the noisy tokens of `packed` in example order; the bare packing's come in the same
    order), and per target token v_without + g (v - v_without). Examples without conditions have no guidance."""
    if guidance == 1.0 or not any(seg.role == "cond" for ex in examples for seg in ex):
        return lambda x, t: teacher(x, t, packed.codec, packed.meta)
    bare = pack([[seg for seg in ex if seg.role != "cond"] or ex for ex in examples], layout, two_copies=True,
                row_length=row_length, unread_clean=unread_clean)
    noisy = bare.meta.noisy & bare.valid
    b_rows, b_cols = noisy.nonzero(as_tuple=True)
    order = torch.sort(bare.meta.sample[b_rows, b_cols], stable=True).indices
    b_rows, b_cols = b_rows[order], b_cols[order]
    rows, cols = noisy_at
    if len(b_rows) != len(rows):  # cannot happen unless packing changed: conditions are never noisy
        raise RuntimeError(f"teacher guidance: {len(rows)} target tokens with conditions, {len(b_rows)} without")
    x_bare = bare.values.to(packed.values.dtype).clone()
    t_bare = torch.zeros_like(bare.t, dtype=packed.t.dtype)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        v = teacher(x, t, packed.codec, packed.meta)
        x_bare[b_rows, b_cols] = x[rows, cols].to(x_bare.dtype)
        t_bare[b_rows, b_cols] = t[rows, cols]
        v_bare = teacher(x_bare, t_bare, bare.codec, bare.meta)
        out = v.clone()
        without = v_bare[b_rows, b_cols].to(v.dtype)
        out[rows, cols] = without + guidance * (v[rows, cols] - without)
        return out

    return velocity
