"""Print the caption -> image scores of two evaluated runs side by side, with Wilson 95% intervals.

    python docs/compare_captions.py runs/cmp/textvae runs/cmp/minilm

Proportions over n items (top-1/top-5 retrieval, digit accuracy, scene arrangement) get a Wilson interval over the
set's item count; `scene objects placed` is a mean over objects (2-3 per scene), shown with the scene count.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SCORES = [("emoji (seen names) top1", "emoji (seen names)"), ("emoji (seen names) top5", "emoji (seen names)"),
          ("emoji (held-out names) top5", "emoji (held-out names)"), ("digit accuracy", "digits"),
          ("scene objects placed", "scenes (held-out combinations)"), ("scene arrangement", "scenes (held-out combinations)")]


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(runs: list[str]) -> None:
    reports = [json.loads((Path(r) / "report.json").read_text())["tasks"]["caption_to_image"] for r in runs]
    print("| score (n) | " + " | ".join(f"{Path(r).name} g = 1 | g = 3 | control" for r in runs) + " |")
    print("|---" * (1 + 3 * len(runs)) + "|")
    for score, items in SCORES:
        n = reports[0]["caption-to-image"]["items"][items]
        cells = []
        for rep in reports:
            ev = rep["caption-to-image"]
            for g in ("guidance 1", "guidance 3"):
                p = ev[g][score]
                lo, hi = wilson(p, n)
                cells.append(f"{p:.3f} [{lo:.2f}, {hi:.2f}]")
            cells.append(f"{ev['guidance 1']['shuffled ' + score]:.3f}")
        print(f"| {score} ({n}) | " + " | ".join(cells) + " |")
    fits = [rep["prior-fit"] for rep in reports]
    print("| prior fit with / without the caption | " + " | ".join(
        f"{f.get('with condition', float('nan')):.3f} / {f.get('without condition', float('nan')):.3f} | | " for f in fits) + "|")


if __name__ == "__main__":
    main(sys.argv[1:])
