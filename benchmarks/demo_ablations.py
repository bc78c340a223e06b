"""What buys the joint demo quality per step and per second: prior variants on the demo's own codecs.

    python benchmarks/demo_ablations.py [--codecs-from runs/demo] [--out runs/ablations] [--only base,muon,...]
                                        [--samples 128] [--threads 2] [--list]

A name may join variants with '+' (muon+more-scenes: both sets of overrides; now+ema-0.999: one change on top of the
demo config as it is; a part with '=' is a dotted override itself: now+wide+train.steps=2400).
Every variant is the demo config as it was before this comparison (`configs/demo.yaml` with BEFORE's overrides: AdamW,
2,000 training scenes) with a few dotted overrides (below, VARIANTS; `now` is configs/demo.yaml as it is), and the
three codecs loaded from
--codecs-from (a finished `make demo` run: the same codec weights, data, seeds and step budget for every variant, so
only the prior's recipe differs). Each variant trains its prior into <out>/<name> and is evaluated by the demo's
evaluators at guidance 1 and 3 with their shuffled-condition controls and 95% intervals (--samples per set). A
finished variant (its report.json there) is reused by a rerun, so the table can be built up over several sittings.

Prints one row per variant: prior wall time and seconds per step, held-out prior fit (flow loss with the condition,
summed over the four tasks), then the headline score of each direction at g = 1 / g = 3 with the control; then one
JSON line: {"<variant>": {"s_per_step", "prior_fit", "<task> g<g>", "<task> g<g> control", ...}}.
Timing: run it on a quiet machine (or with the same --threads and load for every variant); the wall times are only
comparable within one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).parents[1]
BASE = ROOT / "configs" / "demo.yaml"

# The demo config before this comparison (configs/demo.yaml with its winners taken back out): every variant but `now`
# starts from it, so the table reads against one base however the demo config moves on.
BEFORE = ["train.optimizer=adamw", "data.config.scenes=2000"]
# name -> (what it changes, dotted overrides of the base)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("the demo config before this comparison (AdamW, 2,000 training scenes)", []),
    "now": ("configs/demo.yaml as it is now (Muon, 8,000 scenes, ...)", []),
    "seed1": ("base with another seed (the noise between runs)", ["seed=1"]),
    "muon": ("Muon for the prior's matrix weights, AdamW for the rest", ["train.optimizer=muon"]),
    "uniform-t": ("uniform flow times for every codec (not logit-normal)",
                  ["codecs.text.time_sampler.kind=uniform", "codecs.image.time_sampler.kind=uniform",
                   "codecs.speech.time_sampler.kind=uniform"]),
    "image-loc2": ("image flow times logit-normal at loc 2 (more weight near noise)", ["codecs.image.time_sampler.loc=2.0"]),
    "image-weight2": ("image tokens weigh 2 in the flow loss (codecs.image.loss_weight)", ["codecs.image.loss_weight=2.0"]),
    "more-scenes": ("8,000 training scenes instead of 2,000 (the same 54 combinations, more renditions)",
                    ["data.config.scenes=8000"]),
    "c2i-weight5": ("caption -> image weight 5 instead of 3 (of 10 -> 12)", ["tasks.caption_to_image.weight=5"]),
    "tts-weight3": ("text -> speech weight 3 instead of 2", ["tasks.text_to_speech.weight=3"]),
    "ema-0.999": ("EMA decay 0.999 (with warm-up) instead of 0.99", ["train.ema_decay=0.999"]),
    "no-ema": ("the raw weights (EMA decay 0)", ["train.ema_decay=0.0"]),
    "dropout-0.2": ("condition dropout 0.2 instead of 0.1", ["train.cond_dropout=0.2"]),
    "dropout-0.05": ("condition dropout 0.05", ["train.cond_dropout=0.05"]),
    "wsd": ("constant learning rate, linear cool-down over the last 20% (not cosine)", ["train.lr_schedule=wsd"]),
    "wide": ("width 256, depth 3 (base: 192 x 4)", ["prior.width=256", "prior.depth=3", "prior.heads=8"]),
    "deep": ("width 128, depth 8", ["prior.width=128", "prior.depth=8", "prior.heads=4"]),
    "image-patch4": ("image codec retrained with 4 x 4 latent pixels a token: 4 tokens of 64 channels (base: 16 of 16)",
                     ["codecs.image.config.patch=4"]),
}
RETRAIN = {"image-patch4": ("image",)}
"""Variants that change a codec: it trains in the variant's own run (its steps as in configs/demo.yaml), the others load."""
HEADLINE = {"caption_to_image": ("caption-to-image", "scene objects placed", True),
            "image_to_caption": ("image-to-caption", "scenes (held-out) exact", True),
            "text_to_speech": ("text-to-speech", "WER", False),
            "speech_to_text": ("speech-to-text", "word accuracy", True)}


def parts(name: str) -> list[str]:
    """A variant, or several joined by '+' (their overrides together: muon+more-scenes)."""
    found = name.split("+")
    unknown = [p for p in found if p not in VARIANTS and "=" not in p]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)} (or join them with '+', "
                 "or add a dotted override: now+train.steps=2400)")
    return found


def variant_config(name: str, codecs_from: Path, out: Path) -> Path:
    """<out>/<name>.yaml: the demo config with the variant's overrides and the codecs of `codecs_from`."""
    from latentbridge.config import load_config
    from latentbridge.typedconfig import save_config

    # `now` (alone or joined: now+ema-0.999) starts from configs/demo.yaml as it is; every other name from BEFORE.
    # A part with '=' is one dotted override itself (now+wide+train.steps=2400: the same wall time as `now`).
    overrides = ([] if "now" in parts(name) else list(BEFORE)) + [
        o for part in parts(name) for o in (VARIANTS[part][1] if part in VARIANTS else [part])]
    retrain = {r for part in parts(name) for r in RETRAIN.get(part, ())}
    for role in ("text", "image", "speech"):
        if role in retrain:
            continue
        overrides.append(f"codecs.{role}.pretrained={(codecs_from / 'codecs' / role).resolve()}")
    cfg = load_config(BASE, [f"--{o}" for o in overrides])
    cfg.name = f"demo-{name.replace('+', '-')}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    save_config(cfg, path)
    return path


def run_variant(name: str, args: argparse.Namespace) -> Path:
    out = Path(args.out)
    run_dir = out / name
    if (run_dir / "report.json").is_file():
        return run_dir
    cfg = variant_config(name, Path(args.codecs_from), out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "latentbridge"]
    if not (run_dir / "checkpoints" / "latest").exists() or not _finished(run_dir):
        resume = ["--resume"] if (run_dir / "checkpoints" / "latest").exists() else []
        subprocess.run([*cli, "train", str(cfg), "--run-dir", str(run_dir), "--no-progress", *resume], check=True, env=env)
    subprocess.run([*cli, "eval", str(run_dir), "--samples", str(args.samples), "--no-progress"], check=True, env=env)
    return run_dir


def _finished(run_dir: Path) -> bool:
    from latentbridge.evaluate.report import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("stage") == "prior"]
    cfg_steps = int(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())["train"]["steps"])
    return bool(rows) and rows[-1]["step"] >= cfg_steps - 1


def summary(run_dir: Path) -> dict[str, float]:
    from latentbridge.evaluate.report import read_metrics, read_report

    everything = read_metrics(run_dir)
    rows = [r for r in everything if r.get("stage") == "prior"]
    report = read_report(run_dir)
    out: dict[str, float] = {"prior_s": rows[-1]["elapsed_s"], "s_per_step": rows[-1]["elapsed_s"] / max(rows[-1]["step"], 1)}
    codec_rows = [r for r in everything if r.get("stage") == "codec"]
    if codec_rows:  # a codec this variant retrained
        out["codec_s"] = sum(max(r["elapsed_s"] for r in codec_rows if r.get("role") == role) for role in {r.get("role") for r in codec_rows})
    fit = [report["tasks"][t]["prior-fit"].get("with condition") for t in HEADLINE if "prior-fit" in report["tasks"].get(t, {})]
    out["prior_fit"] = float(sum(fit)) if fit and None not in fit else float("nan")
    for task, (evaluator, metric, _) in HEADLINE.items():
        rows_t = report["tasks"].get(task, {}).get(evaluator, {})
        intervals = rows_t.get("ci95", {})
        for key, row in rows_t.items():
            if not key.startswith("guidance ") or metric not in row:
                continue
            g = key.split()[1]
            out[f"{task} g{g}"] = row[metric]
            out[f"{task} g{g} control"] = row.get(f"shuffled {metric}", float("nan"))
            ci = intervals.get(key, {}).get(metric)
            if ci:
                out[f"{task} g{g} ci95"] = ci
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs-from", default="runs/demo", help="a finished demo run whose codecs every variant uses")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--samples", type=int, default=128, help="examples per evaluated set")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    args = ap.parse_args()
    if args.list:
        for name, (what, overrides) in VARIANTS.items():
            print(f"{name:14s} {what}  [{' '.join(overrides) or '-'}]")
        return
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    for n in names:
        parts(n)
    if not (Path(args.codecs_from) / "codecs").is_dir():
        sys.exit(f"{args.codecs_from} holds no trained codecs: run `make demo` first (or pass --codecs-from RUN)")
    results = {name: summary(run_variant(name, args)) for name in names}

    def cell(r: dict, task: str, g: str) -> str:
        v, c = r.get(f"{task} g{g}"), r.get(f"{task} g{g} control")
        return "—" if v is None else f"{v:.3f} ({c:.2f})"

    head = f"{'variant':26s} {'prior s':>8s} {'s/step':>7s} {'fit':>6s} " + " ".join(
        f"{t + ' g' + g:>24s}" for t in HEADLINE for g in ("1", "3"))
    print(head)
    for name, r in results.items():
        print(f"{name:26s} {r['prior_s']:8.0f} {r['s_per_step']:7.3f} {r['prior_fit']:6.3f} "
              + " ".join(f"{cell(r, t, g):>24s}" for t in HEADLINE for g in ("1", "3")))
    print("(score (shuffled control); WER lower is better, the rest higher)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
