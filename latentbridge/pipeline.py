"""Generation, the one path: `Pipeline.from_pretrained(run_dir).generate(...)`.

A `Pipeline` is a trained run ready to generate: it encodes the conditions with their codecs, runs the block loop of
latentbridge.generation (prefill the context, integrate each new block, commit it at t = 0) and decodes the results
with the target codec. `sample_run` (`latentbridge sample`) writes what it generates to files. The engine's names
(`generate_latents`, `generate_documents`, `sample_generator`) are importable from here too.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.flow import SOLVERS
from latentbridge.generation import DocumentResult, GeneratedItem, generate_documents, generate_latents, sample_generator
from latentbridge.plugins import Registries
from latentbridge.prior import PriorBackbone, TokenMeta
from latentbridge.runs import load_run
from latentbridge.sequence import Example, Segment, SequenceLayout, end_of_document, pack
from latentbridge.data.document import DocItem, as_document
from latentbridge.tasks import Task, document_roles, find_task, tasks_of

__all__ = ["DocumentResult", "GeneratedDocument", "GeneratedItem", "Pipeline", "generate_documents", "generate_latents",
           "sample_generator", "sample_run", "write_generated"]


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
