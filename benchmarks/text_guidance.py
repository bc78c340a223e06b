"""Guidance for text continuation: what the unconditional pass is changes what guidance does.

    python benchmarks/text_guidance.py [--run runs/text-prior] [--ar runs/text-ar] [--prompts 128] [--guidance 1 2 3]
    python benchmarks/text_guidance.py --fraction 0.75 --with-context      # prompts guidance can act on

Continues held-out prompts (test split, each cut at half its words) with a trained text prior
(`latentbridge train configs/text_prior.yaml`) at each guidance scale, under each `sampling.unconditional`:
  conditions  the unconditional pass drops the `cond` segments; a text prompt has none, so guidance does nothing
              (latentbridge before 0.3 did only this)
  block       Cola DLM: the unconditional pass sees the block being generated alone
and scores the continuations: perplexity under the autoregressive baseline of benchmarks/text_vs_ar.py (--ar,
trained there), MiniLM similarity of prompt + continuation to prompt + held-out rest, mean length in tokens,
2-gram repetition. 95% intervals: MiniLM from the per-prompt spread (normal), perplexity by bootstrap over prompts;
then each scale against guidance 1 on the same prompts (paired: MiniLM change, perplexity ratio).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from latentbridge.pipeline import Pipeline  # noqa: E402
from latentbridge.tasks import TaskMixture  # noqa: E402
from latentbridge_demo.baselines.autoregressive import load_ar  # noqa: E402
from latentbridge_demo.evaluate.continuation import cut_prompts  # noqa: E402
from latentbridge_demo.evaluate.text import minilm_similarity, repetition_rate  # noqa: E402
from text_vs_ar import ar_nll  # noqa: E402  (benchmarks/, first on the path when run as a script)


def perplexity_interval(sums: torch.Tensor, counts: torch.Tensor, draws: int = 2000) -> tuple[float, float, float]:
    """exp(total NLL / tokens), and its 2.5 / 97.5 percentiles over prompts resampled with replacement."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(sums), (draws, len(sums)), generator=gen)
    boot = torch.exp(sums[idx].sum(1) / counts[idx].sum(1).clamp_min(1))
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return math.exp(float(sums.sum() / counts.sum().clamp_min(1))), lo, hi


def paired_vs(base: tuple[torch.Tensor, torch.Tensor, torch.Tensor], row: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              draws: int = 2000) -> dict[str, float]:
    """Against guidance 1 on the same prompts: the change of MiniLM (mean ± 95%) and the perplexity ratio with its
    95% interval from resampling prompts jointly for both (paired, so prompt difficulty cancels)."""
    (s0, c0, m0), (s1, c1, m1) = base, row
    diff = m1 - m0
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(s0), (draws, len(s0)), generator=gen)
    ratio = torch.exp(s1[idx].sum(1) / c1[idx].sum(1).clamp_min(1) - s0[idx].sum(1) / c0[idx].sum(1).clamp_min(1))
    lo, hi = torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    point = math.exp(float(s1.sum() / c1.sum().clamp_min(1) - s0.sum() / c0.sum().clamp_min(1)))
    return {"minilm_change": float(diff.mean()), "minilm_change_half_width": 1.96 * float(diff.std()) / math.sqrt(len(diff)),
            "perplexity_ratio": point, "perplexity_ratio_lo": lo, "perplexity_ratio_hi": hi}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/text-prior")
    ap.add_argument("--ar", default="runs/text-ar", help="the autoregressive baseline (train it with benchmarks/text_vs_ar.py)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    ap.add_argument("--modes", nargs="+", default=["conditions", "block"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.5, help="where each held-out text is cut (share of its words)")
    ap.add_argument("--with-context", action="store_true",
                    help="keep only prompts with at least one whole prior block of tokens: guidance has no context to "
                         "act on in a first block (Cola DLM switches it off there), so only these show its effect")
    args = ap.parse_args()

    pipe = Pipeline.from_pretrained(args.run)
    if not (Path(args.ar) / "model.safetensors").is_file():
        sys.exit(f"{args.ar} holds no autoregressive baseline: run `python benchmarks/text_vs_ar.py --ar {args.ar}` first.")
    ar = load_ar(Path(args.ar)).eval()
    task = pipe.tasks[0]
    tok = pipe.codecs[task.target].tokenizer
    source = TaskMixture([task], pipe.cfg.seed, pipe.registries).source(task)
    prompts, refs = cut_prompts(source.split("test")["text"], args.fraction)
    codec = pipe.codecs[task.target]
    if args.with_context:
        block = codec.latent_spec.block_size * getattr(codec.config, "tokens_per_latent", 1)
        keep = [i for i, p in enumerate(prompts) if len(tok(p, add_special_tokens=False)["input_ids"]) >= block]
        prompts, refs = [prompts[i] for i in keep], [refs[i] for i in keep]
    prompts, refs = prompts[: args.prompts], refs[: args.prompts]
    refs_full = [p + " " + r for p, r in zip(prompts, refs)]
    modes = [m for m in args.modes if hasattr(pipe.cfg.sampling, "unconditional")] or ["conditions (no choice)"]

    figures: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    per_prompt: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for mode in modes:
        if hasattr(pipe.cfg.sampling, "unconditional"):
            pipe.cfg.sampling.unconditional = mode
        for g in args.guidance:
            start = time.perf_counter()
            outs = pipe.generate(prompts=prompts, target=task.target, guidance=g, batch_size=32, seed=args.seed)
            seconds = time.perf_counter() - start
            sums, counts = ar_nll(ar, tok, prompts, outs)
            ppl, lo, hi = perplexity_interval(sums, counts)
            sim = minilm_similarity([p + o for p, o in zip(prompts, outs)], refs_full).double()
            half = 1.96 * float(sim.std()) / math.sqrt(len(sim))
            ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outs]
            key = f"{mode.split()[0]} g{g:g}"
            outputs[key] = outs
            per_prompt[key] = (sums, counts, sim)
            figures[key] = {"ar_perplexity": ppl, "ar_perplexity_lo": lo, "ar_perplexity_hi": hi,
                            "minilm": float(sim.mean()), "minilm_half_width": half,
                            "mean_tokens": sum(map(len, ids)) / len(ids), "repetition": repetition_rate(ids), "seconds": seconds}
            print(f"  {key}: done in {seconds:.1f} s", file=sys.stderr)
    ref_sums, ref_counts = ar_nll(ar, tok, prompts, [" " + r for r in refs])
    for key, f in figures.items():
        base = f"{key.rsplit(' g', 1)[0]} g1"
        if base in per_prompt and base != key:
            f.update(paired_vs(per_prompt[base], per_prompt[key]))

    print(f"{pipe.cfg.name}: {len(prompts)} held-out prompts (cut at {args.fraction:g} of their words"
          f"{', each at least one prior block long' if args.with_context else ''}), {pipe.cfg.sampling.steps} Euler steps per block, "
          f"seed {args.seed}")
    print(f"{'unconditional':<14}{'g':>4}{'AR perplexity [95%]':>28}{'MiniLM ± 95%':>18}{'tokens':>8}{'2-gram rep':>11}{'s':>7}")
    for key, f in figures.items():
        mode, g = key.rsplit(" g", 1)
        print(f"{mode:<14}{g:>4}{f['ar_perplexity']:>12.1f} [{f['ar_perplexity_lo']:.1f}, {f['ar_perplexity_hi']:.1f}]"
              f"{f['minilm']:>11.3f} ± {f['minilm_half_width']:.3f}{f['mean_tokens']:>8.1f}{f['repetition']:>11.4f}{f['seconds']:>7.1f}")
    print("paired against guidance 1 of the same unconditional pass (same prompts):")
    for key, f in figures.items():
        if "minilm_change" in f:
            print(f"  {key:<16} MiniLM {f['minilm_change']:+.4f} ± {f['minilm_change_half_width']:.4f}   AR perplexity x "
                  f"{f['perplexity_ratio']:.3f} [{f['perplexity_ratio_lo']:.3f}, {f['perplexity_ratio_hi']:.3f}]")
    first = outputs[next(iter(outputs))]
    same = {k: sum(a == b for a, b in zip(first, v)) for k, v in outputs.items()}
    print(f"continuations identical to the first row's, of {len(prompts)}: " + ", ".join(f"{k} {n}" for k, n in same.items()))
    print(f"AR perplexity of the held-out references: {math.exp(float(ref_sums.sum() / ref_counts.sum())):.1f}")
    print(json.dumps({"prompts": len(prompts), "reference_ar_perplexity": math.exp(float(ref_sums.sum() / ref_counts.sum())),
                      **{f"{k} {m}": round(v, 4) for k, f in figures.items() for m, v in f.items()},
                      **{f"{k} identical_to_first": n for k, n in same.items()}}))


if __name__ == "__main__":
    main()
