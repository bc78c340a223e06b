"""Few-step generation on the joint demo: its four directions for the teacher (Euler) and a distilled student (jumps).

    python benchmarks/few_step_demo.py [--run runs/demo] [--student runs/demo-student] [--distill-steps 300]
                                       [--guidance 3.0] [--samples 32]

The teacher is the demo's trained run (`make demo`). The student is distilled from it into --student unless it is
there already: `configs/demo.yaml` with train.objective=distill, prior.step_conditioning, train.teacher=--run and
the teacher's guidance --guidance folded in (train.teacher_guidance), so it samples at guidance 1 what the teacher
samples at --guidance, in one pass per step and no unconditional rows. Then every direction is evaluated by the demo's
evaluators (scores and their shuffled-condition controls, --samples per set):
  teacher  Euler, 8 and 16 steps per block, at guidance 1 and --guidance
  student  shortcut jumps, 1, 2 and 4 per block, at guidance 1 (= the teacher's --guidance, folded)
Prints one row per score with a column per setting (control in brackets), writes <out>/few_step_demo.png (the
headline score of each direction against steps per block), then one JSON line of the headline scores:
<task>_teacher<steps>_g<scale> and <task>_student<jumps> (e.g. image_to_caption_student2). Evaluations are kept in
<out> and reused by a rerun while the student is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latentbridge.config import load_config  # noqa: E402
from latentbridge.evaluate.run import evaluate_run  # noqa: E402
from latentbridge.plugins import registries  # noqa: E402
from latentbridge.train.experiment import train  # noqa: E402

ROOT = Path(__file__).parents[1]
# the headline score of each direction: (task, metric name ending, higher is better)
HEADLINE = {"caption_to_image": ("scene objects placed", True), "image_to_caption": ("scenes (held-out) exact", True),
            "text_to_speech": ("WER", False), "speech_to_text": ("word accuracy", True)}


def scores(report: dict) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """(task, evaluator, metric) -> (score, shuffled control or None) for every 'guidance g' row of the report."""
    out = {}
    for task, rows in report["tasks"].items():
        for evaluator, value in rows.items():
            if not isinstance(value, dict):
                continue
            for key, row in value.items():
                if not key.startswith("guidance ") or not isinstance(row, dict):
                    continue
                for metric, v in row.items():
                    if metric.startswith("shuffled ") or not isinstance(v, (int, float)) or isinstance(v, bool):
                        continue
                    ctrl = row.get(f"shuffled {metric}")
                    out[(task, evaluator, f"{key}: {metric}")] = (float(v), None if ctrl is None else float(ctrl))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="the trained demo run (the teacher)")
    ap.add_argument("--student", default="runs/demo-student", help="the distilled student (trained here if missing)")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--guidance", type=float, default=3.0, help="the teacher's guidance folded into the student")
    ap.add_argument("--samples", type=int, default=32, help="examples per evaluated set")
    ap.add_argument("--out", default="runs/few-step-demo")
    args = ap.parse_args()
    reg = registries()
    teacher, student = Path(args.run), Path(args.student)
    if not (teacher / "checkpoints").is_dir():
        raise SystemExit(f"few_step_demo: {teacher} has no checkpoints; train the demo first (make demo).")
    train_s = None
    if not (student / "checkpoints" / "latest").exists():
        cfg = load_config(ROOT / "configs" / "demo.yaml", [  # the student uses the teacher run's codecs as they are
            "--train.objective=distill", "--prior.step_conditioning=true", f"--train.teacher={teacher}",
            f"--train.teacher_guidance={args.guidance}", f"--train.steps={args.distill_steps}", "--train.warmup_steps=20",
            "--train.lr=1e-3", "--train.checkpoint_every=100", "--sampling.solver=shortcut", "--sampling.steps=2",
            "--sampling.guidance=[1.0]", "--eval.guidance_scales=[1.0]"])
        start = time.perf_counter()
        train(cfg, student, reg=reg, progress=True)
        train_s = time.perf_counter() - start
    g = args.guidance
    plan = [("teacher", "euler", 8, [1.0, g]), ("teacher", "euler", 16, [1.0, g]),
            *[("student", "shortcut", k, [1.0]) for k in (1, 2, 4)]]
    table: dict[str, dict] = {}
    slugs: dict[str, str] = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for who, solver, k, scales in plan:
        run = teacher if who == "teacher" else student
        kept = out / f"{who}_{solver}_{k}_n{args.samples}.json"  # a rerun (e.g. for the plot) reuses the evaluation
        if train_s is None and kept.is_file():
            report = json.loads(kept.read_text())
        else:
            report = evaluate_run(run, samples=args.samples, guidance_scales=scales, registries=reg, progress=False,
                                  log=lambda _: None, steps=k, solver=solver)
            kept.write_text(json.dumps(report, default=str))
        for scale in scales:
            name = f"{who} {k} g{scale:g}" if who == "teacher" else f"{who} {k} (g{g:g} folded)"
            slugs[name] = f"{who}{k}_g{scale:g}" if who == "teacher" else f"{who}{k}"
            picked = {key: val for key, val in scores(report).items() if key[2].startswith(f"guidance {scale:g}: ")}
            table[name] = {(t, e, m.split(": ", 1)[1]): v for (t, e, m), v in picked.items()}
    names = list(table)
    keys = list(dict.fromkeys(k for col in table.values() for k in col))
    print(f"The demo's directions, {args.samples} examples per set; teacher {teacher} (Euler), student {student} "
          f"(jumps, the teacher's guidance {g:g} folded in){'' if train_s is None else f'; student trained in {train_s:.0f} s'}")
    print(f"{'task / score':60} " + " ".join(f"{n:>22}" for n in names))
    for key in keys:
        cells = []
        for n in names:
            v = table[n].get(key)
            cells.append(f"{'':>22}" if v is None else f"{v[0]:>11.3f} ({'—' if v[1] is None else f'{v[1]:.3f}'})".rjust(22))
        print(f"{(key[0] + ': ' + key[2])[:60]:60} " + " ".join(cells))
    figures = {}
    for task, (metric, _) in HEADLINE.items():
        for n in names:
            for (t, _, m), v in table[n].items():
                if t == task and m == metric:
                    figures[f"{task}_{slugs[n]}"] = round(v[0], 4)
                    break
    plot(table, g, out / "few_step_demo.png")
    print(json.dumps(figures))


def plot(table: dict, g: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(3.6 * len(HEADLINE), 3.3))
    for ax, (task, (metric, higher)) in zip(axes, HEADLINE.items()):
        def value(name):
            return next((v for (t, _, m), v in table.get(name, {}).items() if t == task and m == metric), None)

        for label, names in ((f"teacher, Euler, g = {g:g}", [(k, f"teacher {k} g{g:g}") for k in (8, 16)]),
                             ("teacher, Euler, g = 1", [(k, f"teacher {k} g1") for k in (8, 16)]),
                             (f"student, jumps (g = {g:g} folded)", [(k, f"student {k} (g{g:g} folded)") for k in (1, 2, 4)])):
            pts = [(k, value(n)) for k, n in names if value(n) is not None]
            if pts:
                ax.plot([k for k, _ in pts], [v[0] for _, v in pts], "o-", label=label)
        ctrl = [value(n)[1] for n in table if value(n) is not None and value(n)[1] is not None]
        if ctrl:
            ax.axhline(sum(ctrl) / len(ctrl), color="gray", ls="--", label="shuffled control (mean)")
        ax.set(xscale="log", xlabel="steps per block", title=f"{task}\n{metric} ({'higher' if higher else 'lower'} is better)")
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
