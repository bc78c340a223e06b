"""The demo prior's training step: encoding each step's items against reading a latent cache, in fp32 and bf16; and
Muon's step, torch.optim.Muon against BatchedMuon, on the prior's matrices.

    python benchmarks/prior_step.py [--codecs-from runs/demo] [--steps 50]

Trains the demo prior (configs/demo.yaml as it is, its three codecs loaded from a finished demo run) for --steps steps
in four settings -- train.mixed_precision no / bf16, train.cache_latents false / true -- and times the steps after the
first 10 from metrics.jsonl. The cache is built once per run before its first step (every data set of the mixture:
images for text and image, the two speech sets for text and speech); its build time is measured apart. Prints seconds
per step and the ratio to "fp32, encode each step". Then the optimizer alone: seconds per Muon step over the demo
prior's block matrices (random gradients, 20 timed steps after 3), torch.optim.Muon and BatchedMuon (iterating in
bf16, and in fp32). Last, one JSON line: s_per_step (by setting), cache_speedup_fp32, cache_speedup_bf16,
bf16_over_fp32_cached, cache_build_s, muon_s_per_step (torch, batched, batched fp32), muon_batched_speedup,
muon_fp32_over_bf16, native_bf16 (whether this CPU computes bf16 natively; where it does not, bf16 is emulated and
slow), cpu_bf16_ratio (bf16 over fp32 seconds of the products `train.mixed_precision: auto` times) and auto_precision
(what auto resolves to here). Run it on an otherwise quiet machine, with the default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).parents[1]
SETTINGS = [("fp32, encode each step", "no", False), ("fp32, latent cache", "no", True),
            ("bf16, encode each step", "bf16", False), ("bf16, latent cache", "bf16", True)]


def train(cfg: Path, run_dir: Path, steps: int, precision: str, cached: bool, cache_dir: Path) -> list[dict]:
    from latentbridge.train.metrics import read_metrics_file

    subprocess.run([sys.executable, "-m", "latentbridge", "train", str(cfg), "--run-dir", str(run_dir), "--no-progress",
                    f"--train.steps={steps}", "--train.log_every=1", "--train.checkpoint_every=0",
                    f"--train.mixed_precision={precision}", f"--train.cache_latents={str(cached).lower()}",
                    f"--train.latent_cache_dir={cache_dir}"],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [r for r in read_metrics_file(run_dir / "metrics.jsonl") if r.get("stage") == "prior"]


def seconds_per_step(rows: list[dict]) -> float:
    at = {r["step"]: r["elapsed_s"] for r in rows}
    first, last = 10, max(at)
    return (at[last] - at[first]) / (last - first)


def muon_seconds(codecs_from: Path) -> dict[str, float]:
    """Seconds per optimizer step of torch.optim.Muon and BatchedMuon (its Newton-Schulz iteration in bf16, and in fp32
    as a run computing in fp32 on a CPU does) over the trained demo prior's block matrices."""
    import torch

    from latentbridge.runs import load_run
    from latentbridge.train.optim import BatchedMuon, muon_parameter

    prior = load_run(codecs_from).prior
    shapes = [p.shape for n, p in prior.named_parameters() if muon_parameter(n, p)]
    out = {}
    for name, cls, extra in (("torch", torch.optim.Muon, {}), ("batched", BatchedMuon, {}),
                             ("batched fp32", BatchedMuon, {"ns_dtype": torch.float32})):
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = cls(params, lr=1e-3, adjust_lr_fn="match_rms_adamw", **extra)
        for p in params:
            p.grad = torch.randn_like(p)
        for _ in range(3):
            opt.step()
        start = time.perf_counter()
        for _ in range(20):
            opt.step()
        out[name] = (time.perf_counter() - start) / 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs-from", default="runs/demo", help="a finished demo run (its codecs are loaded)")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    if args.steps < 20:
        sys.exit("--steps: at least 20 (the first 10 are left out of the timing)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from demo_ablations import variant_config

    from latentbridge.config import load_config
    from latentbridge.train.experiment import cache
    from latentbridge.train.parallel import cpu_bf16_ratio, native_bf16, resolve_precision

    with tempfile.TemporaryDirectory() as tmp:
        cfg = variant_config("now", Path(args.codecs_from), Path(tmp))

        start = time.perf_counter()
        cache(load_config(cfg, []), Path(tmp) / "run-cache", progress=False)  # the build, timed apart from the steps
        build_s = time.perf_counter() - start
        # the steps read the cache built above (same codecs and data: reused, not rebuilt)
        found = {name: seconds_per_step(train(cfg, Path(tmp) / f"run{i}", args.steps, precision, cached,
                                              Path(tmp) / "run-cache" / "latent_cache"))
                 for i, (name, precision, cached) in enumerate(SETTINGS)}
    base = found[SETTINGS[0][0]]
    print(f"{'setting':28s} {'s/step':>8s} {'x fp32, encode':>15s}")
    for name, v in found.items():
        print(f"{name:28s} {v:8.3f} {v / base:15.2f}")
    print(f"latent cache built in {build_s:.1f} s (once per run; every later run with the same codecs and data reuses it)")
    muon = muon_seconds(Path(args.codecs_from))
    print(f"Muon step over the prior's block matrices: torch.optim.Muon {muon['torch']:.4f} s, BatchedMuon "
          f"{muon['batched']:.4f} s ({muon['torch'] / muon['batched']:.2f}x); BatchedMuon iterating in fp32 {muon['batched fp32']:.4f} s")
    ratio = cpu_bf16_ratio() if native_bf16("cpu") else float("nan")
    print(f"train.mixed_precision auto resolves to {resolve_precision('auto', 'cpu')[0]!r} here (native bf16: "
          f"{native_bf16('cpu')}; bf16 / fp32 seconds of the timed products: {ratio:.2f})")
    print(json.dumps({"muon_s_per_step": muon, "muon_batched_speedup": muon["torch"] / muon["batched"],
                      "muon_fp32_over_bf16": muon["batched fp32"] / muon["batched"],
                      "s_per_step": found,
                      "cache_speedup_fp32": found[SETTINGS[0][0]] / found[SETTINGS[1][0]],
                      "cache_speedup_bf16": found[SETTINGS[2][0]] / found[SETTINGS[3][0]],
                      "bf16_over_fp32_cached": found[SETTINGS[3][0]] / found[SETTINGS[1][0]],
                      "cache_build_s": build_s, "native_bf16": native_bf16("cpu"), "cpu_bf16_ratio": ratio,
                      "auto_precision": resolve_precision("auto", "cpu")[0]}))


if __name__ == "__main__":
    main()
