"""A run's report: report.json (read and written here only), report.md, and the terminal summary.

    update_report(run_dir, change)   read report.json, apply `change(report)`, write it back atomically
    write_markdown(run_dir, ...)     report.md: per task each evaluator's scores (guidance scales beside the
                                     shuffled controls), sample pictures and files, the loss curves

Layout of report.json after `latentbridge eval`: {"guidance_scales", "samples_per_set", "eval_s",
"tasks": {task: {"direction", "data", "eval_s", "<evaluator>": {figures..., "guidance g": {score: value},
"ci95": {"guidance g": {score: [low, high]}}}}}} (plus "codecs" from codec-stage reports).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from latentbridge.train.metrics import read_metrics_file

REPORT = "report.json"
INTERVALS = "ci95"
"""Key of an evaluator's 95% intervals in report.json: {"guidance g": {score: [low, high]}} (latentbridge.evaluator)."""


def read_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / REPORT
    return json.loads(path.read_text()) if path.is_file() else {}


def update_report(run_dir: str | Path, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Apply `change` to the run's report and write it back (a temporary file, then a rename: never half written)."""
    run_dir = Path(run_dir)
    report = read_report(run_dir)
    change(report)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{REPORT}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, run_dir / REPORT)
    return report


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl (none if the run logged nothing)."""
    return read_metrics_file(Path(run_dir) / "metrics.jsonl")


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def score_table(rows: dict[str, Any]) -> list[str]:
    """Markdown table: one line per score, one column per guidance scale (shuffled controls beside), each figure with
    its 95% interval in brackets where the evaluator scored item by item."""
    scales = [k for k in rows if k.startswith("guidance ")]
    if not scales:
        return []
    intervals = rows.get(INTERVALS, {})

    def cell(scale: str, metric: str) -> str:
        v = rows[scale].get(metric, "")
        ci = intervals.get(scale, {}).get(metric)
        return _fmt(v) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    metrics = list(dict.fromkeys(k for s in scales for k in rows[s] if not k.startswith("shuffled ")))
    head = "| score | " + " | ".join(f"g = {s.split()[1]}" for s in scales) + " | shuffled (control) |"
    lines = [head, "|---" * (len(scales) + 2) + "|"]
    for m in metrics:
        vals = [cell(s, m) for s in scales]
        ctrl = " / ".join(cell(s, f"shuffled {m}") for s in scales if f"shuffled {m}" in rows[s])
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {ctrl or '—'} |")
    return lines


def _evaluator_rows(task_rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in task_rows.items() if isinstance(v, dict)}


def write_markdown(run_dir: Path, name: str, report: dict[str, Any]) -> Path:
    """report.md: per task, each evaluator's figures and score table; the samples written for it; the loss curves."""
    lines = [f"# {name}: evaluation", "",
             f"{report['samples_per_set']} examples per set; guidance scales {report['guidance_scales']}; every conditional "
             "score also with the condition shuffled over the examples (scored against the original references); "
             "95% intervals in brackets (Wilson's for rates, else a bootstrap over the items).", ""]
    if (run_dir / "loss.png").is_file():
        lines += ["![training loss](loss.png)", ""]
    samples = run_dir / "samples"
    for task, rows in report["tasks"].items():
        lines += [f"## {task}: {rows.get('direction', '')} (data: {rows.get('data', '?')})", ""]
        for evaluator, scores in _evaluator_rows(rows).items():
            extras = {k: v for k, v in scores.items() if not k.startswith("guidance ") and k != INTERVALS}
            lines += [f"**{evaluator}**", ""]
            if extras:
                lines += [", ".join(f"{k}: {_fmt(v) if not isinstance(v, dict) else json.dumps(v)}" for k, v in extras.items()), ""]
            lines += score_table(scores) + [""]
        found = sorted(p for p in samples.glob(f"{task}_*")) if samples.is_dir() else []
        found += sorted(p for p in (samples / task).rglob("*") if p.is_file()) if (samples / task).is_dir() else []
        pictures = [p for p in found if p.suffix == ".png" and (p.parent == samples or p.name == "grid.png")]  # grids, not items
        others = [p for p in found if p.suffix != ".png" and p.is_file()]
        lines += [f"![{p.stem if p.parent == samples else p.parent.relative_to(samples)}]({p.relative_to(run_dir)})"
                  for p in pictures[:8]] + [""]
        if others:
            lines += ["Files: " + ", ".join(f"[{p.relative_to(samples)}]({p.relative_to(run_dir)})" for p in others[:24]), ""]
    lines += [f"Evaluation took {report.get('eval_s', 0):.0f} s.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def format_report(report: dict[str, Any]) -> str:
    """Each task's score tables as plain text, for the terminal."""
    out = []
    for task, rows in report["tasks"].items():
        out.append(f"{task} ({rows.get('direction', '')}):")
        for evaluator, scores in _evaluator_rows(rows).items():
            table = score_table(scores)
            plain = {k: v for k, v in scores.items() if not k.startswith("guidance ") and not isinstance(v, dict)}
            out.append(f"  {evaluator}" + (": " + ", ".join(f"{k} {_fmt(v)}" for k, v in plain.items()) if plain else ""))
            out += ["    " + line for line in table]
    return "\n".join(out)
