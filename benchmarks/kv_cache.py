"""Cost per generated block with and without the KV cache, at block 1, 8 and 32.

With the cache a block costs its own tokens plus attention over the cached keys, so the cost should
barely grow along the sequence; without it every velocity evaluation recomputes the whole context,
so the cost grows linearly. Also checks that both paths give the same latents.

    python benchmarks/kv_cache.py [--preset small] [--device cpu] [--dtype fp32|bf16]

Prints a table, then one JSON line: cached_block32_over_block1, uncached_block32_over_block1, max_abs_diff.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from latentbridge.generation import generate_latents
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.sequence import SequenceLayout, Stream


def timed_generation(prior, layout, prompts, blocks, steps, use_cache, seed, device):
    stamps = []

    def on_block(i, block):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    out = generate_latents(prior, layout, prompts, "text", blocks * layout.streams["text"].block_size, steps=steps,
                           use_cache=use_cache, seed=seed, on_block=on_block)
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]  # seconds per block (block 1 includes the prefill)
    return out, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    torch.manual_seed(0)
    layout = SequenceLayout({"text": Stream(dim=16, block_size=16)})
    prior = BlockCausalDiT(prior_config(args.preset, layout.dims)).to(device, dtype).eval()
    with torch.no_grad():  # trained-looking weights: nonzero everywhere (zero-init output would make v = 0)
        for p in prior.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompts = [[] for _ in range(args.batch)]  # unconditional: block 1 has no context and no prefill

    runs = {}
    outputs = {}
    for use_cache in (True, False):
        per_block = []
        for r in range(args.repeats + 1):
            out, times = timed_generation(prior, layout, prompts, args.blocks, args.steps, use_cache, 0, device)
            if r:  # the first run warms up
                per_block.append(times)
        runs[use_cache] = [statistics.median(col) for col in zip(*per_block)]
        outputs[use_cache] = out
    max_abs_diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outputs[True], outputs[False]))

    picks = [b for b in (1, 8, 32) if b <= args.blocks]
    print(f"KV cache benchmark: preset {args.preset}, {prior.num_parameters():,} parameters, {args.device} {args.dtype}, "
          f"batch {args.batch}, block 16 tokens, {args.steps} Euler steps per block (median of {args.repeats})")
    print(f"{'block':>6} {'cached ms':>10} {'uncached ms':>12} {'context tokens':>15}")
    for b in picks:
        print(f"{b:>6} {1000 * runs[True][b - 1]:>10.1f} {1000 * runs[False][b - 1]:>12.1f} {16 * (b - 1):>15}")
    base_c, base_u = runs[True][0], runs[False][0]
    figures = {
        "cached_block32_over_block1": round(runs[True][picks[-1] - 1] / base_c, 3),
        "uncached_block32_over_block1": round(runs[False][picks[-1] - 1] / base_u, 3),
        "max_abs_diff": max_abs_diff,
        "cached_ms_per_block_at_block1": round(1000 * base_c, 2),
        "uncached_ms_per_block_at_block32": round(1000 * runs[False][picks[-1] - 1], 2),
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
