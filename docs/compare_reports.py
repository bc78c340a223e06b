"""Compare the scores of two demo reports leaf by leaf: `python docs/compare_reports.py OLD/report.json NEW/report.json`.

Reads the 0.1 layout (report["tasks"][task][...], report["prior_fit"], report["codecs"]) and the 0.2 layout
(report["tasks"][task][evaluator][...]), maps both to (task, kind, key) -> number and prints every pair, then
one JSON line: how many figures were compared, how many are equal, the largest difference.
"""

from __future__ import annotations

import json
import sys


def flat(report: dict) -> dict[tuple, float]:
    out: dict[tuple, float] = {}

    def walk(prefix: tuple, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk((*prefix, k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)

    targets = {}
    for task, rows in report["tasks"].items():
        for key, value in rows.items():
            if key in ("eval_s", "items", "kind", "direction", "data"):
                continue
            if isinstance(value, dict) and not key.startswith("guidance "):  # 0.2: one entry per evaluator
                if key == "prior-fit":
                    walk((task, "prior fit"), value)
                elif key == "reconstruction":
                    targets.setdefault(task, value)
                elif key != "samples":
                    for k, v in value.items():
                        if k not in ("eval_s", "items"):
                            walk((task, "scores", k), v)
            else:
                walk((task, "scores", key), value)
    for task, fit in report.get("prior_fit", {}).items():  # 0.1
        walk((task, "prior fit"), fit)
    for role, row in report.get("codecs", {}).items():  # 0.1: per role; 0.2: per task's target (same items)
        walk(("codec", role), {k: v for k, v in row.items()})
    for task, row in targets.items():
        walk(("codec", task), {k: v for k, v in row.items()})
    return out


def main() -> None:
    old, new = (json.load(open(p)) for p in sys.argv[1:3])
    a, b = flat(old), flat(new)
    roles = {"caption_to_image": "image", "image_to_caption": "text", "text_to_speech": "speech", "speech_to_text": "text"}
    b = {(("codec", roles.get(k[1], k[1]), *k[2:]) if k[0] == "codec" else k): v for k, v in sorted(b.items())
         if not (k[0] == "codec" and k[1] == "speech_to_text")}  # the text codec once: on the images data, as in 0.1
    shared = sorted(set(a) & set(b))
    equal = sum(a[k] == b[k] for k in shared)
    for k in shared:
        print(f"{' / '.join(map(str, k)):<90} {a[k]:>10.4f} {b[k]:>10.4f} {'' if a[k] == b[k] else 'DIFFERS'}")
    only = sorted(set(a) ^ set(b))
    for k in only:
        print(f"only in {'old' if k in a else 'new'}: {' / '.join(map(str, k))}")
    worst = max((abs(a[k] - b[k]) for k in shared), default=0.0)
    print(json.dumps({"compared": len(shared), "equal": equal, "max_abs_diff": worst, "only_old": sum(k in a for k in only),
                      "only_new": sum(k in b for k in only)}))


if __name__ == "__main__":
    main()
