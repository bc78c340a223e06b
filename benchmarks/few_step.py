"""Quality against steps per block: a flow prior (Euler), a shortcut prior and a distilled student (one jump per step).

    python benchmarks/few_step.py [--steps 2000] [--distill-steps 500] [--work runs/few-step]

Both priors train on the toy ring (configs/toy_label_to_vector.yaml: label -> 2-D point) for the same number of
optimizer steps from the same codecs, data and seed; the shortcut one also regresses jumps
(train.objective=shortcut). A third, the student, is distilled from the flow prior for --distill-steps more
steps (train.objective=distill, 8 teacher Euler steps per jump), so teacher + student cost about what the shortcut
prior costs in wall time. Each is evaluated by the ring evaluator (class agreement of the samples with their
label, MMD^2 to the data; 2,000 samples) at guidance 1 and 2: the flow prior with Euler at 1, 2, 4, 8 and 16 steps
per block, the shortcut prior and the student with their jumps at 1, 2 and 4 (and the shortcut prior with Euler at 16,
its flow-matching part alone).
Wall time of training is reported too (the shortcut objective runs two extra forward passes without gradient).

Prints a table, writes <work>/few_step.png, then one JSON line: for each prior and steps, mmd2 and class agreement
at guidance 1 (mmd2_flow_euler_2, class_agreement_shortcut_shortcut_2, ...), train_s_flow, train_s_shortcut,
train_s_distill (the student's steps alone). A fourth prior, "folded", is distilled like the student but from the
teacher's guided velocity (train.teacher_guidance 2): sampled at guidance 1 it is compared with the others at
guidance 2 (mmd2_g2_folded_shortcut_1, ...). --priors picks a subset (a rerun of one).
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
PLAN = {"flow": [("euler", k) for k in (1, 2, 4, 8, 16)],
        "shortcut": [("shortcut", k) for k in (1, 2, 4)] + [("euler", 16)],
        "distill": [("shortcut", k) for k in (1, 2, 4)],
        "folded": [("shortcut", k) for k in (1, 2, 4)]}
FOLDED = 2.0  # the teacher's guidance scale the "folded" student learns (sampled at guidance 1: its g=2 columns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps of each prior")
    ap.add_argument("--samples", type=int, default=2000, help="samples per evaluated set")
    ap.add_argument("--distill-steps", type=int, default=500, help="optimizer steps of the distilled student")
    ap.add_argument("--work", default="runs/few-step", help="where the runs go (kept: a rerun only evaluates)")
    ap.add_argument("--priors", default=",".join(PLAN), help=f"which of {', '.join(PLAN)} (the students need flow)")
    args = ap.parse_args()
    reg = registries()
    work = Path(args.work)
    extra = {"flow": [], "shortcut": ["--prior.step_conditioning=true", "--train.objective=shortcut"],
             "distill": ["--prior.step_conditioning=true", "--train.objective=distill", f"--train.teacher={work / 'flow'}",
                         "--train.warmup_steps=20", "--train.lr=1e-3"]}
    extra["folded"] = [*extra["distill"], f"--train.teacher_guidance={FOLDED}"]
    chosen = [p.strip() for p in args.priors.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PLAN]
    if unknown:
        raise SystemExit(f"few_step: unknown prior(s) {unknown}; choose from {', '.join(PLAN)}")
    rows, figures = [], {}
    for prior in chosen:
        plan = PLAN[prior]
        run_dir = work / prior
        scales = "[1.0]" if prior == "folded" else "[1.0, 2.0]"  # the folded student's guidance 1 is its teacher's 2
        cfg = load_config(ROOT / "configs" / "toy_label_to_vector.yaml",
                          [f"--train.steps={args.distill_steps if prior in ('distill', 'folded') else args.steps}",
                           f"--eval.samples={args.samples}", f"--eval.guidance_scales={scales}", *extra[prior]])
        timing = run_dir / "train_s.json"
        if not timing.exists():
            start = time.perf_counter()
            train(cfg, run_dir, reg=reg, progress=True)
            timing.write_text(json.dumps({"train_s": time.perf_counter() - start}))
        figures[f"train_s_{prior}"] = round(json.loads(timing.read_text())["train_s"], 1)
        for solver, k in plan:
            report = evaluate_run(run_dir, registries=reg, progress=False, log=lambda _: None, steps=k, solver=solver,
                                  evaluators=["ring"])
            (task,) = report["tasks"].values()
            ring = task["ring"]
            if prior == "folded":
                g1, g2 = {"class_agreement": float("nan"), "mmd2": float("nan")}, ring["guidance 1"]
                rows.append((prior, solver, k, g1["class_agreement"], g1["mmd2"], g2["class_agreement"], g2["mmd2"],
                             ring["label_blind_mmd2"]))
                figures[f"mmd2_g2_{prior}_{solver}_{k}"] = round(g2["mmd2"], 4)
                figures[f"class_agreement_g2_{prior}_{solver}_{k}"] = round(g2["class_agreement"], 3)
                continue
            g1, g2 = ring["guidance 1"], ring["guidance 2"]
            rows.append((prior, solver, k, g1["class_agreement"], g1["mmd2"], g2["class_agreement"], g2["mmd2"],
                         ring["label_blind_mmd2"]))
            figures[f"mmd2_{prior}_{solver}_{k}"] = round(g1["mmd2"], 4)
            figures[f"class_agreement_{prior}_{solver}_{k}"] = round(g1["class_agreement"], 3)
    print(f"Toy ring, label -> point, {args.steps} optimizer steps per prior, {args.samples} samples per set "
          f"(label-blind MMD^2 baseline {rows[0][7]:.3f}; true samples' class agreement ~0.90)")
    print(f"{'prior':>9} {'solver':>9} {'steps':>6} {'agree g=1':>10} {'mmd2 g=1':>9} {'agree g=2':>10} {'mmd2 g=2':>9}")
    for prior, solver, k, a1, m1, a2, m2, _ in rows:
        print(f"{prior:>9} {solver:>9} {k:>6} {a1:>10.3f} {m1:>9.4f} {a2:>10.3f} {m2:>9.4f}")
    print("training wall time: " + ", ".join(f"{p} {figures[f'train_s_{p}']:.0f} s" for p in chosen)
          + " (the students' after their teacher, the flow prior; 'folded': guidance 2 folded in, its g=1 is shown as g=2)")
    plot(rows, work / "few_step.png")
    print(json.dumps(figures))


def plot(rows: list[tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, pick in (("flow prior, Euler", lambda r: r[0] == "flow"),
                        ("shortcut prior, jumps", lambda r: r[0] == "shortcut" and r[1] == "shortcut"),
                        ("distilled student, jumps", lambda r: r[0] == "distill")):
        chosen = [r for r in rows if pick(r)]
        if not chosen:
            continue
        ks = [r[2] for r in chosen]
        axes[0].plot(ks, [r[4] for r in chosen], "o-", label=label)
        axes[1].plot(ks, [r[3] for r in chosen], "o-", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="steps per block", ylabel="MMD² to the data (g = 1)")
    axes[1].set(xscale="log", xlabel="steps per block", ylabel="class agreement (g = 1)")
    for ax in axes:
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
