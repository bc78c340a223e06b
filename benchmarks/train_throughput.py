"""Prior training throughput as a fraction of this machine's matmul speed, in fp32 and bf16 autocast.

One training step (forward + backward of the flow-matching loss on a packed batch) is counted in
FLOPs with torch's FlopCounterMode; its FLOP/s is divided by the FLOP/s of a large square matmul of
the same dtype timed in the same run. A fraction near 1 means the step is bound by matmuls and the
rest (norms, masks, packing, elementwise ops) costs little.

    python benchmarks/train_throughput.py [--preset small] [--device cpu]

A second table times a step of the demo's task mixture (configs/demo.yaml: 32 examples of caption ->
image, image -> caption, text -> speech and speech -> text in rows of 128, bf16) with the clean copies
no noisy token reads (each example's last target block) left out, as training does, and kept.

A third table times the same step eager and under torch.compile (inductor), fp32 and bf16; a fourth trains the
prior (preset --dist-preset) in two torchrun processes under DDP and under FSDP2 and compares tokens/s, peak RSS
and the bytes of parameters + gradients + Adam state each process holds.

Prints the tables, then one JSON line: fp32_fraction_of_matmul, bf16_fraction_of_matmul,
tokens_per_s_fp32, tokens_per_s_bf16, mix_tokens_lean, mix_tokens_all, mix_step_ratio_all_over_lean,
compile_speedup_fp32, compile_speedup_bf16, fsdp_over_ddp_tokens_per_s, fsdp_peak_rss_over_ddp,
fsdp_state_bytes_over_ddp.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _flops import FlopCounterMode  # torch's, taught the CPU attention kernel

from latentbridge.flow import LogitNormal
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.sequence import Segment, SequenceLayout, Stream, pack
from latentbridge.train.objective import prior_loss


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


def step_times(step, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Median seconds of `step()` after `warmup` calls (a compiled step compiles in those)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_rows(device: torch.device, preset: str, layout, examples, samplers, row_length, steps: int) -> dict:
    """Step time eager vs torch.compile (inductor) of the same prior step, in fp32 and bf16 autocast (interleaved runs
    would share dynamo's caches, so each variant gets a fresh prior)."""
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        for compiled in (False, True):
            torch.manual_seed(0)
            prior = BlockCausalDiT(prior_config(preset, layout.dims)).to(device)
            if compiled:
                prior.compile()
            opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)
            g = torch.Generator().manual_seed(0)

            def step() -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = prior_loss(prior, layout, examples, samplers, row_length=row_length, generator=g)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            start = time.perf_counter()
            step()
            first = time.perf_counter() - start
            out[(name, compiled)] = {"step_s": step_times(step, steps, device, warmup=1), "first_s": first}
    return out


def worker(mode: str, preset: str, examples_n: int, tokens_n: int, steps: int) -> None:
    """One of two torchrun processes: the prior under DDP or FSDP2 (each block one unit), gloo on the CPU. Rank 0
    prints one JSON line: global tokens/s, peak RSS and the bytes of parameters + gradients + optimizer state this
    process holds."""
    import resource

    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    layout = SequenceLayout({"text": Stream(dim=16, block_size=16), "cond": Stream(dim=16, block_size=16)})
    g = torch.Generator().manual_seed(100 + rank)  # each process its own examples
    examples = [[Segment("cond", torch.randn(16, 16, generator=g), "cond"), Segment("text", torch.randn(tokens_n, 16, generator=g), "target")]
                for _ in range(examples_n)]
    samplers = {"text": LogitNormal(1.0, 1.0), "cond": LogitNormal(1.0, 1.0)}
    torch.manual_seed(0)
    prior = BlockCausalDiT(prior_config(preset, layout.dims))

    class Loss(nn.Module):  # what DDP wraps (the trainer's StageLoss, reduced to the prior's loss)
        def __init__(self) -> None:
            super().__init__()
            self.prior = prior

        def forward(self) -> torch.Tensor:
            return prior_loss(self.prior, layout, examples, samplers, row_length=None, generator=g)["loss"]

    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(Loss())
    else:
        mesh = init_device_mesh("cpu", (world,))
        for block in prior.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(prior, mesh=mesh)
        model = Loss()
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)

    def step() -> None:
        loss = model()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = step_times(step, steps, torch.device("cpu"), warmup=1)

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    held = sum(local(p) + (local(p.grad) if p.grad is not None else 0) for p in prior.parameters())
    held += sum(local(v) for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor))
    tokens = pack(examples, layout, unread_clean=False).valid.sum().item() * world
    stats = torch.tensor([float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), float(held), step_s])
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({"mode": mode, "tokens_per_s": tokens / float(stats[2]), "peak_rss": float(stats[0]),
                          "param_grad_optim_bytes": float(stats[1]), "step_s": float(stats[2]), "tokens": tokens}))
    dist.destroy_process_group()


def two_processes(preset: str, examples_n: int, tokens_n: int, steps: int) -> dict[str, dict]:
    """DDP and FSDP, each in two torchrun processes of one thread (this machine's two cores)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = {}
    for mode in ("ddp", "fsdp"):
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", __file__, "--worker", mode,
               "--dist-preset", preset, "--dist-examples", str(examples_n), "--dist-tokens", str(tokens_n), "--steps", str(steps)]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
        out[mode] = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return out


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
    parser.add_argument("--dist-preset", default="base", help="prior preset of the DDP vs FSDP rows (two CPU processes)")
    parser.add_argument("--dist-examples", type=int, default=2, help="examples per process per step in the DDP vs FSDP rows")
    parser.add_argument("--dist-tokens", type=int, default=64, help="target tokens per example in the DDP vs FSDP rows")
    parser.add_argument("--skip", nargs="*", default=[], choices=["compile", "distributed"], help="leave these tables out")
    parser.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)  # a torchrun process of the DDP/FSDP rows
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dist_preset, args.dist_examples, args.dist_tokens, args.steps)
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
    figures = {}
    if "compile" not in args.skip:
        comp = compiled_rows(device, args.preset, layout, examples, samplers, args.row_length, args.steps)
        print(f"\ntorch.compile (inductor) of the same step, preset {args.preset}")
        print(f"{'dtype':>6} {'eager ms':>9} {'compiled ms':>12} {'speed-up':>9} {'first compiled step s':>22}")
        for name in ("fp32", "bf16"):
            e, c = comp[(name, False)], comp[(name, True)]
            figures[f"compile_speedup_{name}"] = round(e["step_s"] / c["step_s"], 3)
            print(f"{name:>6} {1000 * e['step_s']:>9.1f} {1000 * c['step_s']:>12.1f} {e['step_s'] / c['step_s']:>9.2f} {c['first_s']:>22.1f}")
    if "distributed" not in args.skip:
        dist_rows = two_processes(args.dist_preset, args.dist_examples, args.dist_tokens, args.steps)
        d, f = dist_rows["ddp"], dist_rows["fsdp"]
        print(f"\nTwo CPU processes (gloo, one thread each), preset {args.dist_preset}, {args.dist_examples} examples x "
              f"{args.dist_tokens} target tokens per process, fp32")
        print(f"{'mode':>5} {'tokens/s':>9} {'step ms':>9} {'peak RSS MiB':>13} {'params+grads+Adam MiB per process':>34}")
        for r in (d, f):
            print(f"{r['mode']:>5} {r['tokens_per_s']:>9.0f} {1000 * r['step_s']:>9.1f} {r['peak_rss'] / 2**20:>13.0f} "
                  f"{r['param_grad_optim_bytes'] / 2**20:>34.0f}")
        figures.update({"fsdp_over_ddp_tokens_per_s": round(f["tokens_per_s"] / d["tokens_per_s"], 3),
                        "fsdp_peak_rss_over_ddp": round(f["peak_rss"] / d["peak_rss"], 3),
                        "fsdp_state_bytes_over_ddp": round(f["param_grad_optim_bytes"] / d["param_grad_optim_bytes"], 3),
                        "dist_preset": args.dist_preset})
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
        **figures,
    }))


if __name__ == "__main__":
    main()
