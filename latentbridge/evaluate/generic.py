"""Evaluators that apply to any task, whatever its codecs and data: they ship with latentbridge.

    prior-fit        the prior's held-out flow-matching loss on the task's examples, with the conditions and with
                     them dropped: the gap is what the prior takes from the condition (the "fitting" term of the
                     ELBO split, ARCHITECTURE.md §7)
    reconstruction   the target codec's own diagnostics on held-out items (reconstruction and rate)
    samples          generated items of the task written as files through the target codec's write_items, at
                     every guidance scale, beside the held-out items of the same conditions (reference/); a task whose
                     codec writes no files is skipped
    document-switches  (document tasks) the switch head's choice of what follows each item of held-out documents, read
                     with the document before it, against the truth; the shuffled control reads another document's
                     choices against this one's truth. Also writes HTML pages of documents continued from their first
                     item (samples/<task>/g<scale>/).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from latentbridge.codecs import Codec
from latentbridge.evaluator import Evaluator
from latentbridge.evaluate.codecs import evaluate_codec
from latentbridge.flow import make_time_sampler
from latentbridge.train.objective import draw_noise, prior_loss


@dataclasses.dataclass
class PriorFitConfig:
    """Options of the prior-fit evaluator."""

    examples: int = 64
    """Held-out examples of the task's test split."""
    draws: int = 4
    """Noise and time draws averaged per example."""


class PriorFit(Evaluator):
    """Held-out flow-matching loss with and without the task's conditions."""

    name = "prior-fit"
    config_class = PriorFitConfig
    description = "held-out flow-matching loss of the prior, with and without the conditions"

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        ctx, opts = self.ctx, self.options
        pipe, task = ctx.pipeline, ctx.task
        held = ctx.held_out(opts.examples)
        lat = {r: pipe.codecs[r].encode_items(held[r], sample=False).unbind() for r in task.roles}
        examples = task.examples(lat)
        bare = [[s for s in ex if s.role != "cond"] for ex in examples]
        samplers = {r: make_time_sampler(s.time_sampler.kind, s.time_sampler.loc, s.time_sampler.scale, pipe.codecs[r].latent_spec.dim)
                    for r, s in ctx.cfg.codecs.items()}
        out = {"with condition": 0.0, "without condition": 0.0}
        for d in range(opts.draws):
            noise = draw_noise(examples, pipe.layout, samplers, torch.Generator().manual_seed(ctx.seed + d))
            out["with condition"] += float(prior_loss(pipe.prior, pipe.layout, examples, noise=noise, row_length=None)["loss"]) / opts.draws
            if task.cond:
                out["without condition"] += float(prior_loss(pipe.prior, pipe.layout, bare, noise=noise, row_length=None)["loss"]) / opts.draws
        if not task.cond:
            del out["without condition"]
        return out


@dataclasses.dataclass
class ReconstructionConfig:
    """Options of the reconstruction evaluator."""

    examples: int = 64
    """Held-out items of the task's test split."""


class Reconstruction(Evaluator):
    """The target codec's diagnostics (reconstruction, rate, active channels) on the task's held-out items."""

    name = "reconstruction"
    config_class = ReconstructionConfig
    description = "the target codec's own diagnostics on held-out items"

    def evaluate(self) -> dict[str, Any]:
        items = self.ctx.held_out(self.options.examples)[self.ctx.task.target]
        return evaluate_codec(self.ctx.codecs[self.ctx.task.target], {"test": items})["test"]


@dataclasses.dataclass
class SamplesConfig:
    """Options of the samples evaluator."""

    items: int = 8
    """Generated items written per guidance scale."""


class Samples(Evaluator):
    """Generated items written as files (samples/<task>/g<scale>/) through the target codec's write_items, and the
    held-out items of the same conditions (samples/<task>/reference/)."""

    name = "samples"
    config_class = SamplesConfig
    description = "generated items written as files through the target codec"

    def evaluate(self) -> dict[str, Any]:
        from latentbridge.pipeline import write_generated

        ctx, task, k = self.ctx, self.ctx.task, self.options.items
        codec = ctx.codecs[task.target]
        if type(codec).write_items is Codec.write_items and not _plain_items(codec):
            return {"written": 0, "note": f"codec '{codec.name}' writes no files (no write_items)"}
        held = ctx.held_out(k)
        conditions = {r: v for r, v in held.items() if r in task.cond} if task.cond else None
        labels = next(iter(conditions.values())) if conditions else None
        # the held-out items these conditions came with, beside what the prior made of them
        references = len(write_generated(codec, held[task.target], ctx.run_dir / "samples" / task.name / "reference", labels))
        written = 0
        for g in ctx.guidance_scales if task.cond else [1.0]:
            items = ctx.pipeline.generate(conditions, target=task.target, guidance=g, seed=ctx.seed,
                                          num=None if conditions else k)
            written += len(write_generated(codec, items, ctx.run_dir / "samples" / task.name / f"g{g:g}", labels))
        return {"written": written, "references": references}


def _plain_items(codec: Any) -> bool:
    """Whether the codec's items are plain values the base class writes (text, numbers)."""
    return all(isinstance(x, (str, int, float)) for x in codec.example_items(2, torch.Generator().manual_seed(0)))


@dataclasses.dataclass
class DocumentSwitchesConfig:
    """Options of the document-switches evaluator."""

    pages: int = 8
    """Documents continued from their first held-out item and written as HTML pages, per guidance scale."""
    max_items: int = 6
    """Most items generated per written document."""


class DocumentSwitches(Evaluator):
    """Switch placement on held-out documents (teacher forced), with its shuffled-document control, and pages."""

    name = "document-switches"
    target = "document"
    config_class = DocumentSwitchesConfig
    description = "what the switch head says follows each item of held-out documents; pages of continued documents"

    def evaluate(self) -> dict[str, Any]:
        from latentbridge.document_page import write_document_pages
        from latentbridge.evaluator import PerItem, derangement, summarize

        ctx = self.ctx
        docs = ctx.held_out(ctx.samples)["document"]
        truth = [[item[0] for item in d[1:]] + ["end"] for d in docs]
        said = ctx.pipeline.document_switches(docs)
        order = derangement(len(docs), ctx.seed + 17)
        right = [float(a == b) for s, t in zip(said, truth) for a, b in zip(s, t)]
        control = [float(a == b) for i, t in enumerate(truth) for a, b in zip(said[order[i]], t)]
        ends = [float(s[-1] == "end") for s in said]
        figures, ci = summarize({"switch accuracy": PerItem(right), "shuffled switch accuracy": PerItem(control),
                                 "ends where the document ends": PerItem(ends)}, ctx.seed)
        codecs = {ctx.codecs[r].modality: ctx.codecs[r] for r in ctx.task.document}
        for g in ctx.guidance_scales:
            made = ctx.generate_documents([list(d)[:1] for d in docs[: self.options.pages]], g, self.options.max_items)
            write_document_pages([(d.items, d.prefix, d.ended) for d in made], codecs,
                                 ctx.run_dir / "samples" / ctx.task.name / f"g{g:g}", title=f"{ctx.task.name} (guidance {g:g})")
        return {"items": {"documents": len(docs), "boundaries": len(right)}, "teacher forced": figures,
                "ci95": {"teacher forced": ci}}
