"""Prior training throughput as a fraction of this machine's matmul speed, in fp32 and bf16 autocast.

One training step (forward + backward of the flow-matching loss on a packed batch) is counted in
FLOPs with torch's FlopCounterMode; its FLOP/s is divided by the FLOP/s of a large square matmul of
the same dtype timed in the same run. A fraction near 1 means the step is bound by matmuls and the
rest (norms, masks, packing, elementwise ops) costs little.

    python benchmarks/train_throughput.py [--preset small] [--device cpu]

A second table times a step of the demo's task mixture (configs/demo.yaml: 32 examples of caption ->
image, image -> caption, text -> speech and speech -> text in rows of 128, bf16) with the clean copies
no noisy token reads (each example's last target block) left out, as training does, and kept.

Prints the tables, then one JSON line: fp32_fraction_of_matmul, bf16_fraction_of_matmul,
tokens_per_s_fp32, tokens_per_s_bf16, mix_tokens_lean, mix_tokens_all, mix_step_ratio_all_over_lean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from latentbridge.flow import LogitNormal
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.sequence import Segment, SequenceLayout, Stream, pack
from latentbridge.train.objective import prior_loss


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel SDPA uses here, which
# would count attention as free. Give the CPU kernel the same (dense) formula as the CUDA ones.
_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _cpu_flash.default not in flop_registry:

    @register_flop_formula(_cpu_flash)
    def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def mixture_steps(device: torch.device, preset: str, steps: int) -> dict:
    """Step time of the demo mixture's shapes with and without the unread clean copies (interleaved, median)."""
    layout = SequenceLayout({"text": Stream(16, 16), "image": Stream(16, 16), "speech": Stream(16, 8)})
    g = torch.Generator().manual_seed(1)
    tokens = {"text": 16, "image": 16, "speech": 24}  # a caption, a 32x32 image, a 1.5 s clip
    tasks = [("text", "image")] * 3 + [("image", "text")] * 3 + [("text", "speech")] * 2 + [("speech", "text")] * 2  # weights 3:3:2:2

    def segment(codec: str, role: str) -> Segment:
        return Segment(codec, torch.randn(tokens[codec], 16, generator=g).to(device), role)

    examples = [[segment(cond, "cond"), segment(target, "target")]
                for cond, target in (tasks[i] for i in torch.randint(len(tasks), (32,), generator=g).tolist())]
    samplers = {n: LogitNormal(0.0, 1.0) for n in layout.names}
    torch.manual_seed(0)
    prior = BlockCausalDiT(prior_config(preset, layout.dims)).to(device)
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)

    def step(keep: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = prior_loss(prior, layout, examples, samplers, row_length=128, generator=g, unread_clean=keep)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 + 2 * steps):
        keep = bool(i % 2)
        sync(device)
        start = time.perf_counter()
        step(keep)
        sync(device)
        if i >= 2:
            times[keep].append(time.perf_counter() - start)
    lean, full = (pack(examples, layout, row_length=128, unread_clean=k) for k in (False, True))
    return {"examples": len(examples), "tokens_lean": int(lean.valid.sum()), "tokens_all": int(full.valid.sum()),
            "rows_lean": lean.values.shape[0], "rows_all": full.values.shape[0],
            "lean_s": statistics.median(times[False]), "all_s": statistics.median(times[True])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, default=16, help="examples per step")
    parser.add_argument("--tokens", type=int, default=128, help="target latent tokens per example (each appears twice)")
    parser.add_argument("--row-length", type=int, default=None,
                        help="tokens per packed row; default one example per row (all examples have the same length, so no padding)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--matmul-n", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)

    layout = SequenceLayout({"text": Stream(dim=16, block_size=16), "cond": Stream(dim=16, block_size=16)})
    g = torch.Generator().manual_seed(0)
    examples = [[Segment("cond", torch.randn(16, 16, generator=g).to(device), "cond"),
                 Segment("text", torch.randn(args.tokens, 16, generator=g).to(device), "target")] for _ in range(args.examples)]
    tokens = pack(examples, layout, row_length=args.row_length, unread_clean=False).valid.sum().item()  # what a step runs
    samplers = {"text": LogitNormal(1.0, 1.0), "cond": LogitNormal(1.0, 1.0)}

    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        prior = BlockCausalDiT(prior_config(args.preset, layout.dims)).to(device)
        opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = prior_loss(prior, layout, examples, samplers, row_length=args.row_length, generator=g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        for _ in range(2):
            step()
        sync(device)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        peak = matmul_flops_per_s(device, dtype, args.matmul_n)
        results[name] = {"step_s": step_s, "flops": flops, "flops_per_s": flops / step_s, "matmul_flops_per_s": peak,
                         "fraction": flops / step_s / peak, "tokens_per_s": tokens / step_s}

    print(f"Prior training throughput: preset {args.preset}, {prior.num_parameters():,} parameters, {args.device}, "
          f"{args.examples} examples x ({args.tokens} target tokens x 2 copies + 16 cond) = {tokens} tokens per step, "
          f"rows of {args.row_length or 'one example'}")
    print(f"{'dtype':>6} {'step ms':>9} {'GFLOP/step':>11} {'step GFLOP/s':>13} {'matmul GFLOP/s':>15} {'fraction':>9} {'tokens/s':>10}")
    for name, r in results.items():
        print(f"{name:>6} {1000 * r['step_s']:>9.1f} {r['flops'] / 1e9:>11.2f} {r['flops_per_s'] / 1e9:>13.1f} "
              f"{r['matmul_flops_per_s'] / 1e9:>15.1f} {r['fraction']:>9.3f} {r['tokens_per_s']:>10.0f}")
    mix = mixture_steps(device, args.preset, args.steps)
    print(f"\nDemo task mixture, bf16, rows of 128: {mix['examples']} examples ({mix['tokens_lean']} tokens, "
          f"{mix['rows_lean']} rows) vs unread clean copies kept ({mix['tokens_all']} tokens, {mix['rows_all']} rows)")
    print(f"{'layout':>14} {'step ms':>9}")
    print(f"{'lean':>14} {1000 * mix['lean_s']:>9.1f}\n{'all kept':>14} {1000 * mix['all_s']:>9.1f}")
    print(json.dumps({
        "fp32_fraction_of_matmul": round(results["fp32"]["fraction"], 3),
        "bf16_fraction_of_matmul": round(results["bf16"]["fraction"], 3),
        "tokens_per_s_fp32": round(results["fp32"]["tokens_per_s"]),
        "tokens_per_s_bf16": round(results["bf16"]["tokens_per_s"]),
        "preset": args.preset,
        "device": args.device,
        "row_length": args.row_length,
        "mix_tokens_lean": mix["tokens_lean"],
        "mix_tokens_all": mix["tokens_all"],
        "mix_step_ratio_all_over_lean": round(mix["all_s"] / mix["lean_s"], 3),
    }))


if __name__ == "__main__":
    main()
