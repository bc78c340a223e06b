"""The evaluator protocol: what an evaluator plugin provides, and the guidance sweep with its control.

(The protocol sits apart from latentbridge.evaluate, which runs evaluations and so depends on the whole
library, so that the plugin registries can check evaluator classes without depending on it. Plugin
authors import it as `from latentbridge.evaluate import Evaluator, EvalSet`.)

An evaluator scores one task of a trained run. It says which tasks it can score (`cond` and `target`
modalities, or `datasets` by registered name) and, for a task, builds evaluation sets: conditions (or
prompts) to generate from and the references to score against. The base class runs the rest, the same
way for every evaluator:

    for each guidance scale of eval.guidance_scales (only 1 for a task without conditions):
        for each set: generate, score(set, generated, references), write_samples(...)
                      and the control: generate again from the conditions shuffled over the examples (no
                      example keeps its own) and score against the *original* references, as "shuffled <score>";
                      a task without conditions keeps its generations and shuffles the references instead.

So every score comes with its guidance sweep and its shuffled-condition control. A score given per item
(`PerItem`, or a plain list of per-item numbers) also gets its 95% interval: Wilson's for 0/1 values, else a
seeded percentile bootstrap over the items (for a ratio such as a word error rate, weighted: errors / words).
The report keeps the mean where a float would be and the intervals beside, under "ci95". An evaluator that does
not score generated items (the prior's held-out fit, codec reconstruction) overrides `evaluate`.

    class DigitsEvaluator(Evaluator):
        name, cond, target = "digits", ("text",), "image"
        def sets(self):
            return [EvalSet("digits", {self.ctx.task.cond[0]: captions}, labels)]
        def score(self, eval_set, generated, references):
            return {"accuracy": PerItem(classify(generated) == tensor(references))}   # mean and 95% interval
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import torch

from latentbridge.data.base import NoOptions

if TYPE_CHECKING:
    from latentbridge.data.base import Dataset
    from latentbridge.tasks import Task


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation without fixed points: example i takes the condition of example order[i] != i."""
    if n < 2:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    successor = torch.roll(perm, -1)  # one cycle through all examples in a random order
    return successor[torch.argsort(perm)].tolist()  # example i gets the condition of the one after it in the cycle


@dataclasses.dataclass
class PerItem:
    """A score given item by item: the score is the weighted mean sum(w v) / sum(w) (weights default to 1; a word
    error rate: each item's edits / words with its word count as weight), and it gets a 95% interval (`interval`)."""

    values: Any
    weights: Any = None

    def __post_init__(self) -> None:
        self.values = [float(v) for v in torch.as_tensor(self.values, dtype=torch.float64).flatten().tolist()]
        if self.weights is not None:
            self.weights = [float(w) for w in torch.as_tensor(self.weights, dtype=torch.float64).flatten().tolist()]
            if len(self.weights) != len(self.values) or min(self.weights, default=1.0) < 0:
                raise ValueError(f"PerItem: {len(self.weights)} weights for {len(self.values)} values (weights are >= 0)")

    @property
    def mean(self) -> float:
        if not self.values:
            return float("nan")
        w = self.weights or [1.0] * len(self.values)
        return sum(a * b for a, b in zip(self.values, w)) / max(sum(w), 1e-12)

    def interval(self, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
        """95% interval of the score: Wilson's for unweighted 0/1 values, else the percentile bootstrap."""
        n = len(self.values)
        if n == 0:
            return float("nan"), float("nan")
        if self.weights is None and all(v in (0.0, 1.0) for v in self.values):
            return wilson_interval(sum(self.values), n)
        values = torch.tensor(self.values, dtype=torch.float64)
        weights = torch.tensor(self.weights or [1.0] * n, dtype=torch.float64)
        idx = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
        means = (values[idx] * weights[idx]).sum(1) / weights[idx].sum(1).clamp_min(1e-12)
        lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return lo, hi


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion successes / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(scores: Mapping[str, Any], seed: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
    """An evaluator's scores -> (the figure of each, the 95% interval of each score given per item)."""
    figures, intervals = {}, {}
    for key, value in scores.items():
        if isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.ndim > 0) or \
                (hasattr(value, "ndim") and getattr(value, "ndim", 0) > 0):
            value = PerItem(value)
        if isinstance(value, PerItem):
            figures[key] = value.mean
            intervals[key] = [round(x, 6) for x in value.interval(seed + zlib.crc32(key.encode()) % 10_000)]
        else:
            figures[key] = value
    return figures, intervals


@dataclasses.dataclass
class EvalSet:
    """Examples to generate and score: conditions by role (or prompts to continue) and one reference each."""

    label: str
    conditions: dict[str, list] | None
    references: list
    prompts: list | None = None
    control: bool = True
    """Also score the shuffled-condition control (false: a diagnostic of fit that needs none)."""
    control_seed: int | None = None
    """Seed of the shuffle (null: the run's seed plus a hash of the label)."""

    def __len__(self) -> int:
        return len(self.references)


@dataclasses.dataclass
class EvalContext:
    """What an evaluator sees of the run: its generation path, the task, the task's data set, where to write."""

    pipeline: Any
    """latentbridge.pipeline.Pipeline of the run (cfg, codecs, prior, generate)."""
    task: Task
    dataset: Dataset
    """The task's data set, built as in training."""
    run_dir: Path
    samples: int
    """Examples per evaluated set (eval.samples or --samples)."""
    guidance_scales: list[float]
    seed: int
    options: Any = None
    """The evaluator's own config dataclass (eval.options.<name>)."""
    progress: bool = False

    @property
    def cfg(self) -> Any:
        return self.pipeline.cfg

    @property
    def codecs(self) -> dict[str, Any]:
        return self.pipeline.codecs

    def generate(self, conditions: Mapping[str, Sequence] | None, prompts: Sequence | None = None, guidance: float = 1.0) -> list:
        """Items of the task's target from these conditions (or prompts), deterministic under the run's seed."""
        return self.pipeline.generate(dict(conditions) if conditions else None, prompts=prompts, target=self.task.target,
                                      guidance=guidance, seed=self.seed, progress=self.progress)

    def generate_documents(self, prefixes: Sequence[Sequence[Any]], guidance: float = 1.0, max_items: int = 6) -> list:
        """Documents continued from these prefixes (Pipeline.generate_document), deterministic under the run's seed."""
        return self.pipeline.generate_document(prefixes, guidance=guidance, max_items=max_items, seed=self.seed,
                                               progress=self.progress)

    def held_out(self, n: int | None = None, split: str = "test") -> dict[str, list]:
        """The task's held-out items by role (each role's codec modality picks its field; a document task: its
        documents, under "document")."""
        raw = self.dataset.split(split, n)
        if self.task.document:
            return {"document": list(raw[self.dataset.field("document")])}
        return {r: raw[self.dataset.field(self.codecs[r].modality, r)] for r in self.task.roles}

    def samples_dir(self) -> Path:
        path = self.run_dir / "samples"
        path.mkdir(parents=True, exist_ok=True)
        return path


class Evaluator:
    """Base class of evaluator plugins (see the module docstring)."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoOptions
    """Options, under eval.options.<name> in an experiment."""
    cond: ClassVar[tuple[str, ...] | None] = None
    """Modalities of the task's conditions, in order (() for none; None: any)."""
    target: ClassVar[str | None] = None
    """Modality of the task's target (None: any directional task); "document" for evaluators of document tasks, which
    apply to those only (and the others never to them)."""
    datasets: ClassVar[tuple[str, ...] | None] = None
    """Registered data-set names whose tasks it scores (None: any)."""
    description: ClassVar[str] = ""

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx = ctx
        self.options = ctx.options if ctx.options is not None else self.config_class()

    @classmethod
    def applies(cls, cond: Sequence[str], target: str, dataset: str) -> bool:
        """Whether it scores a task whose conditions have modalities `cond`, whose target is `target`, on `dataset`."""
        if (target == "document") != (cls.target == "document"):
            return False
        return ((cls.cond is None or tuple(cls.cond) == tuple(cond)) and (cls.target is None or cls.target == target)
                and (cls.datasets is None or dataset in cls.datasets))

    # -- what a scoring evaluator writes -----------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        """Load what scoring needs (classifiers, recognizers); return reference figures (ceilings) for the report."""
        return {}

    def sets(self) -> list[EvalSet]:
        raise NotImplementedError(f"evaluator '{self.name}' defines neither sets() nor evaluate()")

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, Any]:
        """Scores of the generations against the references: floats, or per item (PerItem or a list) for an interval."""
        raise NotImplementedError(f"evaluator '{self.name}' defines sets() but not score()")

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        """Write what a researcher looks at (grids, transcripts) for the unshuffled generations; optional."""

    # -- the sweep ------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Reference figures, then per guidance scale every set's scores with their shuffled-condition control."""
        ctx = self.ctx
        rows: dict[str, Any] = dict(self.prepare() or {})
        sets = [s for s in self.sets() if len(s)]
        rows["items"] = {s.label: len(s) for s in sets}
        has_cond = bool(ctx.task.cond)
        intervals: dict[str, dict[str, list[float]]] = {}
        for g in ctx.guidance_scales if has_cond else [1.0]:
            row: dict[str, float] = {}
            ci: dict[str, list[float]] = {}

            def add(scores: Mapping[str, Any], prefix: str = "") -> None:
                figures, found = summarize(scores, ctx.seed)
                row.update({prefix + k: v for k, v in figures.items()})
                ci.update({prefix + k: v for k, v in found.items()})

            for s in sets:
                generated = ctx.generate(s.conditions, s.prompts, g)
                add(self.score(s, generated, s.references))
                self.write_samples(s, generated, g)
                if not s.control or len(s) < 2:
                    continue
                seed = s.control_seed if s.control_seed is not None else ctx.seed + zlib.crc32(s.label.encode()) % 10_000
                order = derangement(len(s), seed)
                if has_cond:
                    shuffled = {r: [v[i] for i in order] for r, v in (s.conditions or {}).items()}
                    prompts = [s.prompts[i] for i in order] if s.prompts is not None else None
                    control = self.score(s, ctx.generate(shuffled, prompts, g), s.references)
                else:
                    control = self.score(s, generated, [s.references[i] for i in order])
                add(control, "shuffled ")
            rows[f"guidance {g:g}"] = row
            if ci:
                intervals[f"guidance {g:g}"] = ci
        if intervals:
            rows["ci95"] = intervals
        return rows

