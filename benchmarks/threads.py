"""Torch's thread settings on a shared 2-core machine: the demo prior's training step alone and beside another process.

    python benchmarks/threads.py [--codecs-from runs/demo] [--steps 40]

Trains the demo prior (configs/demo.yaml, codecs loaded from a finished demo run) for --steps steps in four settings
and times the steps after the first 10 from its metrics.jsonl:
  alone, torch's default threads (one per core)         alone, OMP_NUM_THREADS=1
  beside a busy process, default threads                beside a busy process, OMP_NUM_THREADS=1
The busy process is another torch process multiplying matrices on one thread (as a test run or a second training
would). Prints seconds per step and the ratio to "alone, default threads", then one JSON line of the figures.
Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).parents[1]
BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def seconds_per_step(cfg: Path, run_dir: Path, steps: int, threads: int | None, busy: bool) -> float:
    from latentbridge.train.metrics import read_metrics_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    other = subprocess.Popen([sys.executable, "-c", BUSY], env={**env, "OMP_NUM_THREADS": "1"}) if busy else None
    try:
        subprocess.run([sys.executable, "-m", "latentbridge", "train", str(cfg), "--run-dir", str(run_dir), "--no-progress",
                        f"--train.steps={steps}", "--train.log_every=1", "--train.checkpoint_every=0"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if other is not None:
            other.kill()
            other.wait()
    rows = {r["step"]: r["elapsed_s"] for r in read_metrics_file(run_dir / "metrics.jsonl") if r.get("stage") == "prior"}
    first, last = 10, max(rows)
    return (rows[last] - rows[first]) / (last - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs-from", default="runs/demo", help="a finished demo run (its codecs are loaded)")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from demo_ablations import variant_config

    settings = [("alone, default threads", None, False), ("alone, OMP_NUM_THREADS=1", 1, False),
                ("beside a busy process, default threads", None, True), ("beside a busy process, OMP_NUM_THREADS=1", 1, True)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = variant_config("base", Path(args.codecs_from), Path(tmp))
        found = {name: seconds_per_step(cfg, Path(tmp) / f"run{i}", args.steps, threads, busy)
                 for i, (name, threads, busy) in enumerate(settings)}
    base = found[settings[0][0]]
    print(f"{'setting':42s} {'s/step':>8s} {'x alone, default':>17s}")
    for name, v in found.items():
        print(f"{name:42s} {v:8.3f} {v / base:17.2f}")
    print(json.dumps({"s_per_step": found, "slowdown_beside_busy_default_threads": found[settings[2][0]] / base,
                      "slowdown_beside_busy_one_thread": found[settings[3][0]] / base}))


if __name__ == "__main__":
    main()
