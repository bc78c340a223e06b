"""metrics.jsonl: one JSON object per logged step, appended as training goes."""

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
