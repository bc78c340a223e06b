"""metrics.jsonl: one JSON object per logged step, appended as training goes; loss.png drawn from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (none if missing). A line that is not a whole JSON object (the last line of a run
    killed mid-write, or written onto a full disk) is skipped: the rows before it are intact, and a resume logs the
    steps after its checkpoint again."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def plot_losses(run_dir: Path) -> None:
    """loss.png: one panel per named loss term of each stage in metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics_file(run_dir / "metrics.jsonl")
    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "stage", "role", "lr", "grad_norm", "elapsed_s", "data_skipped") or not isinstance(v, (int, float)):
                continue
            xs, ys = series.setdefault(f"{' '.join(filter(None, [r['stage'], r.get('role')]))}: {k}", ([], []))
            xs.append(r["step"])
            ys.append(v)
    if not series:
        return
    cols = min(5, len(series))
    rows_n = -(-len(series) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False)
    for ax in axes.flat[len(series):]:
        ax.axis("off")
    for ax, (name, (xs, ys)) in zip(axes.flat, series.items()):
        ax.plot(xs, ys, lw=1.2)
        ax.set(title=name, xlabel="step")
        if all(y > 0 for y in ys):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)
