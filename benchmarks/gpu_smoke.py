"""One prepared check for a CUDA machine: FlexAttention == SDPA, and bf16 prior training with and without torch.compile.

    python benchmarks/gpu_smoke.py                      # on a CUDA machine (about two minutes on one GPU)
    python benchmarks/gpu_smoke.py --allow-cpu --preset tiny   # the same script on the CPU (no FlexAttention row)

1. The block-causal DiT with `attention: flex` (a FlexAttention block mask) and with `attention: sdpa` (a boolean
   mask), same weights, same packed batch (several examples per row, noisy and clean copies): largest velocity
   difference in fp32 and bf16.
2. bf16 training steps (AdamW, autocast) at the `base` preset, eager and compiled: tokens/s, model FLOP utilisation
   (FLOPs of a step counted by torch's FlopCounterMode / step time / the GPU's dense bf16 peak, --peak-tflops or
   read from the device name) and peak memory.

Prints a table, then one JSON line: flex_vs_sdpa_max_abs_fp32, flex_vs_sdpa_max_abs_bf16, tokens_per_s_eager,
tokens_per_s_compiled, mfu_eager, mfu_compiled, peak_mem_gib_eager, peak_mem_gib_compiled, compile_speedup, device.
Never needed for the tests; run it when a GPU is lent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from latentbridge.flow import LogitNormal
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.prior.masks import TokenMeta
from latentbridge.sequence import Segment, SequenceLayout, Stream, pack
from latentbridge.train.objective import prior_loss

# dense bf16 peak TFLOP/s by device name (vendor data sheets, without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "4090": 165.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch(layout: SequenceLayout, examples: int, tokens: int, device: torch.device) -> list[list[Segment]]:
    g = torch.Generator().manual_seed(0)
    return [[Segment("cond", torch.randn(16, 16, generator=g).to(device), "cond"),
             Segment("text", torch.randn(tokens, 16, generator=g).to(device), "target")] for _ in range(examples)]


def flex_vs_sdpa(layout: SequenceLayout, device: torch.device, preset: str) -> dict[str, float]:
    """Largest |v_flex - v_sdpa| over a packed batch, fp32 and bf16 autocast."""
    examples = batch(layout, 6, 40, device)
    packed = pack(examples, layout, row_length=256, unread_clean=False)
    torch.manual_seed(0)
    sdpa = BlockCausalDiT(prior_config(preset, layout.dims, attention="sdpa")).to(device).eval()
    with torch.no_grad():  # leave the zero-init: every path must matter
        for p in sdpa.parameters():
            p.add_(0.02 * torch.randn_like(p))
    flex = BlockCausalDiT(prior_config(preset, layout.dims, attention="flex")).to(device).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(packed.values.shape, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.rand(packed.values.shape[:2], generator=torch.Generator().manual_seed(2)).to(device)
    meta = TokenMeta(*(getattr(packed.meta, f.name).to(device) for f in dataclasses.fields(TokenMeta)))
    codec = packed.codec.to(device)
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            a, b = sdpa(x, t, codec, meta).float(), flex(x, t, codec, meta).float()
        valid = packed.valid.to(device)
        out[name] = float((a - b).abs()[valid].max())
    return out


def training(layout: SequenceLayout, device: torch.device, preset: str, examples_n: int, tokens_n: int, steps: int,
             compiled: bool) -> dict[str, float]:
    examples = batch(layout, examples_n, tokens_n, device)
    samplers = {"text": LogitNormal(1.0, 1.0), "cond": LogitNormal(1.0, 1.0)}
    tokens = pack(examples, layout, row_length=None, unread_clean=False).valid.sum().item()
    torch.manual_seed(0)
    prior = BlockCausalDiT(prior_config(preset, layout.dims, attention="flex" if device.type == "cuda" else "sdpa")).to(device)
    if compiled:
        prior.compile()
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = prior_loss(prior, layout, examples, samplers, row_length=None, generator=g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # the compiled variant compiles here
    sync(device)
    first = time.perf_counter() - start
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": step_s, "tokens_per_s": tokens / step_s, "flops": flops, "peak_mem_gib": peak, "first_s": first,
            "params": prior.num_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--examples", type=int, default=32, help="examples per training step")
    ap.add_argument("--tokens", type=int, default=256, help="target latent tokens per example (each appears twice)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by device name)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (no FlexAttention row)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_smoke: no CUDA device here; run it on a GPU machine (or pass --allow-cpu to try the script on the CPU).",
              file=sys.stderr)
        print(json.dumps({"device": "cpu", "cuda": False}))
        return
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    layout = SequenceLayout({"text": Stream(dim=16, block_size=16), "cond": Stream(dim=16, block_size=16)})
    flex = flex_vs_sdpa(layout, device, args.preset)  # on the CPU the prior falls back to SDPA for both: 0 (a dry run)
    runs = {c: training(layout, device, args.preset, args.examples, args.tokens, args.steps, c) for c in (False, True)}
    mfu = {c: (r["flops"] / r["step_s"] / (peak * 1e12) if peak else float("nan")) for c, r in runs.items()}
    print(f"GPU smoke test on {name}: preset {args.preset} ({runs[False]['params']:,} parameters), bf16, "
          f"{args.examples} examples x ({args.tokens} x 2 + 16) tokens per step")
    print(f"FlexAttention vs SDPA, largest |difference| of the velocities: fp32 {flex['fp32']:.2e}, bf16 {flex['bf16']:.2e}")
    print(f"{'':>9} {'step ms':>9} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'first step s':>13}")
    for c, r in runs.items():
        print(f"{'compiled' if c else 'eager':>9} {1000 * r['step_s']:>9.1f} {r['tokens_per_s']:>10.0f} {mfu[c]:>7.3f} "
              f"{r['peak_mem_gib']:>9.2f} {r['first_s']:>13.1f}")
    figures = {
        "flex_vs_sdpa_max_abs_fp32": flex["fp32"], "flex_vs_sdpa_max_abs_bf16": flex["bf16"],
        "tokens_per_s_eager": round(runs[False]["tokens_per_s"]), "tokens_per_s_compiled": round(runs[True]["tokens_per_s"]),
        "mfu_eager": round(mfu[False], 4), "mfu_compiled": round(mfu[True], 4),
        "peak_mem_gib_eager": round(runs[False]["peak_mem_gib"], 2), "peak_mem_gib_compiled": round(runs[True]["peak_mem_gib"], 2),
        "compile_speedup": round(runs[False]["step_s"] / runs[True]["step_s"], 3), "device": name, "preset": args.preset,
    }
    print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
