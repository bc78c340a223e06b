"""`latentbridge eval RUN_DIR`: score every task of a trained run with every evaluator that applies.

For each task, the registered evaluators whose `cond`/`target` modalities or `datasets` fit it run in
turn (plugin evaluators first, then latentbridge's generic ones: prior-fit, reconstruction, samples),
each across eval.guidance_scales and with the shuffled-condition control (latentbridge.evaluator).
The report is written after each evaluator, so nothing is lost if a later one fails: report.json,
report.md, samples/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.evaluator import EvalContext
from latentbridge.evaluate.report import update_report, write_markdown
from latentbridge.pipeline import Pipeline
from latentbridge.plugins import BUILTIN_PROVIDER, Entry, Registries
from latentbridge.tasks import TaskMixture


def chosen_evaluators(names: Sequence[str] | None, reg: Registries) -> list[Entry]:
    """The evaluators eval.evaluators names (checked against the registry), or all: plugins' first, built-ins last."""
    if names is not None:
        for i, name in enumerate(names):
            reg.evaluators.entry(name, f"eval.evaluators[{i}]")
    entries = [e for e in reg.evaluators.entries() if names is None or e.name in names]
    return sorted(entries, key=lambda e: (e.provider == BUILTIN_PROVIDER, e.name))


def evaluator_options(cfg: ExperimentConfig, reg: Registries, names: Sequence[str] | None = None) -> dict[str, tuple[Entry, Any]]:
    """The evaluators to run (`names`, else eval.evaluators, else all) with their options from eval.options, checked."""
    entries = chosen_evaluators(list(names) if names else cfg.eval.evaluators, reg)
    given = {}
    for name, options in cfg.eval.options.items():  # every name and option checked, also of evaluators left out
        reg.evaluators.entry(name, f"eval.options.{name}")
        given[name] = reg.evaluators.config(name, options, f"eval.options.{name}")
    return {e.name: (e, given[e.name] if e.name in given else e.cls.config_class()) for e in entries}


def evaluate_run(run_dir: str | Path, *, samples: int | None = None, guidance_scales: Sequence[float] | None = None,
                 evaluators: Sequence[str] | None = None, progress: bool = True, log: Callable[[str], Any] = print,
                 registries: Registries | None = None, steps: int | None = None, solver: str | None = None) -> dict[str, Any]:
    """Score every task of a trained run; write report.json, report.md and samples/. Returns the report.

    `steps` / `solver`: generate with these instead of the config's sampling.steps / sampling.solver."""
    run_dir = Path(run_dir)
    pipe = Pipeline.from_pretrained(run_dir, registries).set_sampling(steps, solver)
    cfg, reg = pipe.cfg, pipe.registries
    tasks = pipe.tasks
    mix = TaskMixture(tasks, cfg.seed, reg)
    n = samples or cfg.eval.samples
    scales = list(guidance_scales or cfg.eval.guidance_scales)
    chosen = evaluator_options(cfg, reg, evaluators)
    entries = [entry for entry, _ in chosen.values()]
    options = {name: opts for name, (_, opts) in chosen.items()}
    start = time.perf_counter()
    # a full evaluation replaces the task figures; one of some evaluators (--evaluator) replaces only theirs
    keep = bool(evaluators)
    report = update_report(run_dir, lambda r: r.update({"tasks": r.get("tasks", {}) if keep else {}, "guidance_scales": scales,
                                                        "samples_per_set": n, "sampling": {"solver": cfg.sampling.solver,
                                                                                           "steps": cfg.sampling.steps}}))
    for task in tasks:
        cond = tuple(pipe.codecs[r].modality for r in task.cond)
        target = "document" if task.document else pipe.codecs[task.target].modality
        applying = [e for e in entries if e.cls.applies(cond, target, task.data.name)]
        if not applying and evaluators:  # some evaluators asked for by name: the tasks they do not score are left as they are
            log(f"{task.name} ({task.direction}): none of {', '.join(evaluators)} applies; left out")
            continue
        if not applying:
            raise ConfigError(f"no evaluator applies to task {task.name} ({task.direction}); eval.evaluators leaves out "
                              "the generic ones (prior-fit, reconstruction, samples for directional tasks; document-switches "
                              "for document tasks), which apply to every task of their kind.")
        rows: dict[str, Any] = {**(report["tasks"].get(task.name, {}) if keep else {}), "direction": task.direction,
                                "data": task.data.name}
        t0 = time.perf_counter()
        for entry in applying:
            log(f"evaluating {task.name} ({task.direction}) with {entry.name} ...")
            ctx = EvalContext(pipe, task, mix.source(task), run_dir, n, scales, cfg.seed, options[entry.name], progress)
            rows[entry.name] = entry.cls(ctx).evaluate()
            rows["eval_s"] = round(time.perf_counter() - t0, 1)
            report = update_report(run_dir, lambda r, name=task.name, rows=dict(rows): r["tasks"].__setitem__(name, rows))
    report = update_report(run_dir, lambda r: r.__setitem__("eval_s", round(time.perf_counter() - start, 1)))
    write_markdown(run_dir, cfg.name, report)
    return report
