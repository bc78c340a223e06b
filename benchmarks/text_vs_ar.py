"""Latent text model (Text VAE + block-causal prior) vs a parameter-matched autoregressive transformer.

    python benchmarks/text_vs_ar.py [--run runs/text-prior] [--student runs/text-student] [--steps-per-block 2]
                                    [--ar runs/text-ar] [--ar-seconds S] [--prompts 128]

The latent model: the flow prior of a trained run (`latentbridge train configs/text_prior.yaml`, the teacher, sampled
with Euler steps) and, if --student exists, its distilled few-step student (`latentbridge train
configs/text_student.yaml`, sampled with shortcut jumps). The autoregressive baseline trains on the same data and
tokenizer into --ar unless it is there already, for the same wall-clock budget the latent model took to train
(--ar-seconds; default: the codec run + the prior run + the student run, read from their metrics.jsonl), on the
same machine.
Both continue the same held-out prompts (test split, cut at half their words) until [EOS]. Printed:
  speed    generated tokens per second at batch 1 and batch 16 (ratio latent / AR), and FLOPs per generated
           token (FlopCounterMode: matrix products and attention) at batch 1 (the model's own cost) and batch 16
           (with the work items that already ended still cause) -- for every setting below
  quality  the AR model's perplexity on each model's continuations (the latent model's likelihood of
           AR text is not tractable: it has only an ELBO through an ODE, so that direction is left out),
           MiniLM similarity of prompt + continuation to prompt + held-out reference (95% intervals),
           2-gram repetition rate, mean length
  settings the teacher at 2, 4, 8 and 16 Euler steps per block, the student at 1, 2 and 4 jumps; a plot of
           quality against steps per block goes to <--out>/text_steps.png
The headline (--steps-per-block, the student's if there is one) is compared with the AR model and with the teacher
at 8 Euler steps (the target: AR perplexity within 10%, MiniLM within 0.01). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from _flops import counted  # noqa: E402
from latentbridge_demo.baselines.autoregressive import ARConfig, ARModel, encode_texts, load_ar, train_ar  # noqa: E402
from latentbridge.pipeline import Pipeline  # noqa: E402
from latentbridge.tasks import TaskMixture  # noqa: E402
from latentbridge.train.metrics import read_metrics_file  # noqa: E402
from latentbridge_demo.evaluate.continuation import cut_prompts  # noqa: E402
from latentbridge_demo.evaluate.text import minilm_similarity, repetition_rate  # noqa: E402


def generate_text(pipe: Pipeline, prompts, batch_size: int, seed: int = 0) -> list[str]:
    """Continue each prompt with the run's prior until [EOS] (latentbridge's one generation path)."""
    return pipe.generate(prompts=list(prompts), target=pipe.tasks[0].target, batch_size=batch_size, seed=seed)


def ar_generate(model: ARModel, tok, prompts, batch: int, seed: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[i : i + batch]]
        for ids in model.generate(chunk, model.config.max_tokens, tok.eos_token_id, generator=gen):
            out.append(tok.decode(ids))
    return out


def tokens_of(tok, texts) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@torch.no_grad()
def ar_nll(model: ARModel, tok, prompts, continuations) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: summed NLL of the continuation's tokens (+ [EOS]) given the prompt under the AR model, and their count.

    Continuations are decoded tokens, so they carry their own leading space: prompt + continuation."""
    sums, counts = [], []
    for i in range(0, len(prompts), 32):
        ps, cs = prompts[i : i + 32], continuations[i : i + 32]
        ids, valid = encode_texts(tok, [p + c for p, c in zip(ps, cs)], model.config.max_tokens)
        nll = model.sequence_nll(ids, valid)  # [B, T-1]
        for j, p in enumerate(ps):
            k = len(tok(p, add_special_tokens=False)["input_ids"])
            n = int(valid[j].sum())
            sums.append(float(nll[j, k - 1 : n - 1].sum()))
            counts.append(max(0, n - k))
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)


def ar_perplexity(model: ARModel, tok, prompts, continuations) -> float:
    """exp(mean NLL of continuation tokens + [EOS] given the prompt), under the AR model."""
    sums, counts = ar_nll(model, tok, prompts, continuations)
    return math.exp(float(sums.sum()) / max(1.0, float(counts.sum())))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train_seconds(run_dir: Path) -> float:
    """Training wall time of a run: the last elapsed_s of metrics.jsonl, summed over resumed segments (each restarts)."""
    rows = read_metrics_file(Path(run_dir) / "metrics.jsonl")
    if not rows:
        raise SystemExit(f"text_vs_ar: {run_dir}/metrics.jsonl is missing or empty; cannot read the training time of "
                         f"{run_dir}. Pass --ar-seconds to set the baseline's budget.")
    total, last = 0.0, 0.0
    for e in (r["elapsed_s"] for r in rows if "elapsed_s" in r):
        if e < last:  # a resumed segment starts again at 0
            total += last
        last = e
    return total + last


def codec_run_of(pipe: Pipeline, role: str) -> Path | None:
    """The run that trained the prior's codec (its `pretrained` path is <run>/codecs/<role>), if it is one."""
    pretrained = pipe.cfg.codecs[role].pretrained
    if not pretrained:
        return None
    run = Path(pretrained).parents[1]
    return run if (run / "metrics.jsonl").is_file() else None


def bootstrap_ratio(sums: torch.Tensor, counts: torch.Tensor, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of exp(sum / count) over prompts resampled with replacement."""
    rng = random.Random(seed)
    n = len(sums)
    vals = []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        vals.append(math.exp(float(sums[idx].sum()) / max(1.0, float(counts[idx].sum()))))
    vals.sort()
    return vals[int(0.025 * reps)], vals[int(0.975 * reps) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/text-prior", help="trained latent flow prior (the teacher)")
    ap.add_argument("--student", default="runs/text-student", help="its distilled few-step student (skipped if missing)")
    ap.add_argument("--steps-per-block", type=int, default=2, help="the latent model's headline setting (student jumps, "
                    "or teacher Euler steps without a student)")
    ap.add_argument("--ar", default="runs/text-ar", help="autoregressive baseline directory (trained here if missing)")
    ap.add_argument("--ar-seconds", type=float, default=0.0, help="the baseline's training budget in seconds "
                    "(0: the latent model's own training time: codec + prior + student runs)")
    ap.add_argument("--ar-steps", type=int, default=100_000, help="most training steps of the baseline (the budget usually ends it first)")
    ap.add_argument("--ar-width", type=int, default=256)
    ap.add_argument("--ar-depth", type=int, default=0, help="0: pick the depth that matches the latent model's parameters")
    ap.add_argument("--prompts", type=int, default=128, help="held-out prompts for quality")
    ap.add_argument("--out", default="runs/text-vs-ar", help="where the plot goes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    teacher = Pipeline.from_pretrained(args.run)
    student = Pipeline.from_pretrained(args.student) if (Path(args.student) / "checkpoints").is_dir() else None
    cfg, codecs, prior = teacher.cfg, teacher.codecs, teacher.prior
    role = cfg.task.target
    codec = codecs[role]
    tok = codec.tokenizer
    source = TaskMixture(teacher.tasks, cfg.seed, teacher.registries).source(teacher.tasks[0])
    latent_params = sum(p.numel() for p in codec.parameters()) + prior.num_parameters()

    budget_parts = {"prior": train_seconds(Path(args.run))}
    codec_run = codec_run_of(teacher, role)
    if codec_run is not None:
        budget_parts["codec"] = train_seconds(codec_run)
    if student is not None:
        budget_parts["student"] = train_seconds(Path(args.student))
    latent_train_s = sum(budget_parts.values())

    ar_dir = Path(args.ar)
    if (ar_dir / "model.safetensors").is_file():
        ar = load_ar(ar_dir)
    else:
        depth = args.ar_depth
        if depth == 0:  # parameter-matched: the depth whose count is closest to VAE + prior
            per_block = ARModel(ARConfig(len(tok), args.ar_width, 1)).num_parameters() - ARModel(ARConfig(len(tok), args.ar_width, 0)).num_parameters()
            base = ARModel(ARConfig(len(tok), args.ar_width, 0)).num_parameters()
            depth = max(1, round((latent_params - base) / per_block))
        ar = ARModel(ARConfig(len(tok), args.ar_width, depth, max_tokens=codec.config.max_tokens))
        batch = cfg.train.batch_size
        seconds = args.ar_seconds or latent_train_s
        print(f"training the autoregressive baseline ({ar.num_parameters():,} parameters, depth {depth}) for {seconds:.0f} s "
              f"(at most {args.ar_steps} steps of {batch}) into {ar_dir}", file=sys.stderr)
        train_ar(ar, tok, lambda step: source.batch(step, batch, None)["text"], args.ar_steps, ar_dir, seconds=seconds)
    ar.eval()
    ar_rows = read_metrics_file(ar_dir / "metrics.jsonl")
    ar_train_s = ar_rows[-1]["elapsed_s"] if ar_rows else float("nan")
    ar_train_steps = ar_rows[-1]["step"] + 1 if ar_rows else 0

    texts = source.split("test")["text"]
    prompts, refs = cut_prompts(texts[: args.prompts])
    refs_full = [p + " " + r for p, r in zip(prompts, refs)]

    def measure(gen) -> dict:
        """Speed (batch 1 and 16), FLOPs per generated token and quality of one way of generating."""
        gen(prompts[:2], 2, 0)  # warm-up
        out = {}
        for b, n in ((1, 8), (16, 32)):
            outs, s = timed(lambda b=b, n=n: gen(prompts[:n], b, args.seed))
            out[f"tokens_per_s_b{b}"] = (sum(map(len, tokens_of(tok, outs))) + n) / s  # + [EOS] per text
        for b, n in ((1, 8), (16, 16)):  # batch 1: the model's own cost; batch 16 adds what finished items still run
            outs, flops = counted(lambda b=b, n=n: gen(prompts[:n], b, args.seed))
            out[f"flops_per_token_b{b}"] = flops / (sum(map(len, tokens_of(tok, outs))) + n)
        outs = gen(prompts, 16, args.seed + 1)
        ids = tokens_of(tok, outs)
        sums, counts = ar_nll(ar, tok, prompts, outs)
        sim = minilm_similarity([p + o for p, o in zip(prompts, outs)], refs_full)
        out.update({
            "ar_perplexity": math.exp(float(sums.sum()) / max(1.0, float(counts.sum()))),
            "ar_perplexity_ci": bootstrap_ratio(sums, counts),
            "minilm_similarity": float(sim.mean()),
            "minilm_ci": 1.96 * float(sim.std()) / math.sqrt(len(sim)),
            "repetition_rate": repetition_rate(ids),
            "mean_tokens": sum(map(len, ids)) / len(ids),
            "examples": outs[:5],
        })
        return out

    def latent(pipe: Pipeline, solver: str, k: int):
        def gen(ps, b, seed):
            pipe.set_sampling(steps=k, solver=solver)
            return generate_text(pipe, ps, batch_size=b, seed=seed)
        return gen

    plan = [("teacher", "euler", k) for k in (2, 4, 8, 16)]
    if student is not None:
        plan += [("student", "shortcut", k) for k in (1, 2, 4)]
    results = {}
    for who, solver, k in plan:
        print(f"measuring the {who} at {k} {solver} steps per block", file=sys.stderr)
        results[(who, k)] = measure(latent(teacher if who == "teacher" else student, solver, k))
    ar_res = measure(lambda ps, b, seed: ar_generate(ar, tok, ps, b, seed))
    ref_ppl = ar_perplexity(ar, tok, prompts, [" " + r for r in refs])

    head_key = ("student" if student is not None else "teacher", args.steps_per_block)
    if head_key not in results:
        raise SystemExit(f"text_vs_ar: no results for {head_key[0]} at {head_key[1]} steps per block; measured {sorted(results)}")
    head, base8 = results[head_key], results[("teacher", 8)]

    print(f"{len(prompts)} held-out prompts (quality at batch 16; speed: 8 prompts at batch 1, 32 at batch 16); "
          f"AR perplexity of the held-out references: {ref_ppl:.1f}")
    print(f"training wall time: latent {latent_train_s:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in budget_parts.items())}), "
          f"AR {ar_train_s:.0f} s ({ar_train_steps} steps); parameters: latent {latent_params / 1e6:.2f} M, AR {ar.num_parameters() / 1e6:.2f} M")
    print(f"\n{'model':>10} {'steps':>5} {'tok/s b1':>9} {'tok/s b16':>10} {'MFLOP/tok b1':>13} {'b16':>6} {'AR ppl [95%]':>22} "
          f"{'MiniLM ±95%':>14} {'rep':>6} {'tokens':>7}")
    for (who, k), r in [*results.items(), (("AR", 1), ar_res)]:
        lo, hi = r["ar_perplexity_ci"]
        print(f"{who:>10} {k:>5} {r['tokens_per_s_b1']:>9.1f} {r['tokens_per_s_b16']:>10.1f} {r['flops_per_token_b1'] / 1e6:>13.1f} {r['flops_per_token_b16'] / 1e6:>6.1f} "
              f"{r['ar_perplexity']:>8.1f} [{lo:>5.0f}, {hi:>5.0f}] {r['minilm_similarity']:>7.3f} ±{r['minilm_ci']:.3f} "
              f"{r['repetition_rate']:>6.4f} {r['mean_tokens']:>7.1f}")
    ratio_b1 = head["tokens_per_s_b1"] / ar_res["tokens_per_s_b1"]
    ratio_b16 = head["tokens_per_s_b16"] / ar_res["tokens_per_s_b16"]
    ppl_vs_8 = head["ar_perplexity"] / base8["ar_perplexity"] - 1
    sim_vs_8 = head["minilm_similarity"] - base8["minilm_similarity"]
    print(f"\nheadline: {head_key[0]} at {head_key[1]} steps per block: tokens/s {ratio_b1:.2f}x the AR model's at batch 1, "
          f"{ratio_b16:.2f}x at batch 16 (target >= 2); vs the teacher at 8 Euler steps: AR perplexity {ppl_vs_8:+.1%} "
          f"(target within 10%), MiniLM {sim_vs_8:+.3f} (target within 0.01)")
    print("\nexamples:")
    for i, p in enumerate(prompts[:5]):
        print(f"  prompt: {p}\n    teacher 8: {base8['examples'][i]}\n    {head_key[0]} {head_key[1]}: {head['examples'][i]}\n"
              f"    AR:        {ar_res['examples'][i]}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(results, ar_res, out_dir / "text_steps.png")
    figures = {
        "tokens_per_s_ratio_b1": ratio_b1, "tokens_per_s_ratio_b16": ratio_b16,
        "latent_ar_perplexity": head["ar_perplexity"], "ar_ar_perplexity": ar_res["ar_perplexity"],
        "latent_minilm_similarity": head["minilm_similarity"], "ar_minilm_similarity": ar_res["minilm_similarity"],
        "steps_per_block": head_key[1], "latent_sampler": head_key[0],
        "latent_flops_per_token": head["flops_per_token_b1"], "ar_flops_per_token": ar_res["flops_per_token_b1"],
        "latent_flops_per_token_b16": head["flops_per_token_b16"], "ar_flops_per_token_b16": ar_res["flops_per_token_b16"],
        "teacher8_ar_perplexity": base8["ar_perplexity"], "teacher8_minilm_similarity": base8["minilm_similarity"],
        "teacher8_tokens_per_s_ratio_b1": base8["tokens_per_s_b1"] / ar_res["tokens_per_s_b1"],
        "teacher8_tokens_per_s_ratio_b16": base8["tokens_per_s_b16"] / ar_res["tokens_per_s_b16"],
        "reference_ar_perplexity": ref_ppl, "latent_train_s": latent_train_s, "ar_train_s": ar_train_s,
        "ar_train_steps": ar_train_steps, "latent_parameters": latent_params, "ar_parameters": ar.num_parameters(),
        "prompts": len(prompts),
    }
    for (who, k), r in results.items():
        figures[f"{who}{k}_ar_perplexity"] = r["ar_perplexity"]
        figures[f"{who}{k}_minilm_similarity"] = r["minilm_similarity"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


def plot(results: dict, ar_res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for who, label in (("teacher", "flow prior (teacher), Euler"), ("student", "distilled student, jumps")):
        ks = sorted(k for w, k in results if w == who)
        if not ks:
            continue
        rs = [results[(who, k)] for k in ks]
        axes[0].plot(ks, [r["ar_perplexity"] for r in rs], "o-", label=label)
        axes[1].errorbar(ks, [r["minilm_similarity"] for r in rs], yerr=[r["minilm_ci"] for r in rs], fmt="o-", capsize=3, label=label)
        axes[2].plot(ks, [r["tokens_per_s_b1"] for r in rs], "o-", label=label)
    for ax, key in zip(axes, ("ar_perplexity", "minilm_similarity", "tokens_per_s_b1")):
        ax.axhline(ar_res[key], color="gray", ls="--", label="autoregressive")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.set_xlabel("steps per block")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="AR perplexity (lower is better)")
    axes[1].set(ylabel="MiniLM similarity to the held-out rest")
    axes[2].set(ylabel="generated tokens/s, batch 1")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
