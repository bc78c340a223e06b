"""Latent text model (Text VAE + block-causal prior) vs a parameter-matched autoregressive transformer.

    python benchmarks/text_vs_ar.py [--run runs/text-prior] [--ar runs/text-ar] [--ar-steps 1200] [--prompts 64]

Loads the latent model from a trained prior run (`latentbridge train configs/text_prior.yaml`); trains
the autoregressive baseline on the same data and tokenizer into --ar unless it is there already.
Both continue the same held-out prompts (test split, cut at half their words) until [EOS]. Printed
side by side, from one run on one machine:
  speed    generated tokens per second at batch 1 and batch 16 (ratio latent / AR)
  quality  the AR model's perplexity on each model's continuations (the latent model's likelihood of
           AR text is not tractable: it has only an ELBO through an ODE, so that direction is left out),
           MiniLM similarity of prompt + continuation to prompt + held-out reference, 2-gram repetition
           rate, mean length, share that ended with [EOS]
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

from latentbridge_demo.baselines.autoregressive import ARConfig, ARModel, encode_texts, load_ar, train_ar  # noqa: E402
from latentbridge.pipeline import Pipeline  # noqa: E402
from latentbridge.tasks import TaskMixture  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/text-prior", help="trained latent prior run directory")
    ap.add_argument("--ar", default="runs/text-ar", help="autoregressive baseline directory (trained here if missing)")
    ap.add_argument("--ar-steps", type=int, default=1200, help="training steps of the baseline (same batch size as the prior run)")
    ap.add_argument("--ar-width", type=int, default=256)
    ap.add_argument("--ar-depth", type=int, default=0, help="0: pick the depth that matches the latent model's parameters")
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts for quality")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    pipe = Pipeline.from_pretrained(args.run)
    cfg, codecs, prior = pipe.cfg, pipe.codecs, pipe.prior
    role = cfg.task.target
    codec = codecs[role]
    tok = codec.tokenizer
    source = TaskMixture(pipe.tasks, cfg.seed, pipe.registries).source(pipe.tasks[0])
    latent_params = sum(p.numel() for p in codec.parameters()) + prior.num_parameters()

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
        print(f"training the autoregressive baseline ({ar.num_parameters():,} parameters, depth {depth}) for {args.ar_steps} steps "
              f"into {ar_dir}", file=sys.stderr)
        train_ar(ar, tok, lambda step: source.batch(step, batch, None)["text"], args.ar_steps, ar_dir)
    ar.eval()

    texts = source.split("test")["text"]
    prompts, refs = cut_prompts(texts[: args.prompts])

    # ---- speed: the same prompts, batch 1 and batch 16 (warm-up first) --------------------------------
    generate_text(pipe, prompts[:2], batch_size=2)
    ar_generate(ar, tok, prompts[:2], 2, 0)
    speed = {}
    for b, n in ((1, 8), (16, 32)):
        outs, s = timed(lambda b=b, n=n: generate_text(pipe, prompts[:n], batch_size=b, seed=args.seed))
        latent_tps = (sum(map(len, tokens_of(tok, outs))) + n) / s  # + [EOS] per text
        outs, s = timed(lambda b=b, n=n: ar_generate(ar, tok, prompts[:n], b, args.seed))
        ar_tps = (sum(map(len, tokens_of(tok, outs))) + n) / s
        speed[b] = (latent_tps, ar_tps)

    # ---- quality: all prompts at batch 16 ---------------------------------------------------------------
    latent_out = generate_text(pipe, prompts, batch_size=16, seed=args.seed + 1)
    ar_out = ar_generate(ar, tok, prompts, 16, args.seed + 1)
    refs_full = [p + " " + r for p, r in zip(prompts, refs)]

    def quality(outs):
        ids = tokens_of(tok, outs)
        return {
            "ar_perplexity": ar_perplexity(ar, tok, prompts, outs),
            "minilm_similarity": float(minilm_similarity([p + o for p, o in zip(prompts, outs)], refs_full).mean()),
            "repetition_rate": repetition_rate(ids),
            "mean_tokens": sum(map(len, ids)) / len(ids),
        }

    q_latent, q_ar = quality(latent_out), quality(ar_out)
    ref_ppl = ar_perplexity(ar, tok, prompts, [" " + r for r in refs])

    rows = [
        ("parameters", latent_params, ar.num_parameters()),
        ("tokens/s, batch 1", speed[1][0], speed[1][1]),
        ("tokens/s, batch 16", speed[16][0], speed[16][1]),
        ("AR perplexity of continuations", q_latent["ar_perplexity"], q_ar["ar_perplexity"]),
        ("MiniLM similarity to reference", q_latent["minilm_similarity"], q_ar["minilm_similarity"]),
        ("2-gram repetition rate", q_latent["repetition_rate"], q_ar["repetition_rate"]),
        ("mean continuation tokens", q_latent["mean_tokens"], q_ar["mean_tokens"]),
    ]
    print(f"{len(prompts)} held-out prompts; latent model from {args.run}, AR baseline from {ar_dir}; "
          f"AR perplexity of the held-out references: {ref_ppl:.1f}")
    print(f"{'':34} {'latent':>12} {'autoregressive':>15} {'latent/AR':>10}")
    for name, a, b in rows:
        print(f"{name:34} {a:>12.4g} {b:>15.4g} {a / b if b else float('nan'):>10.3f}")
    print("\nexamples:")
    for p, lo, ao in list(zip(prompts, latent_out, ar_out))[:5]:
        print(f"  prompt: {p}\n    latent: {lo}\n    AR:     {ao}")
    figures = {
        "tokens_per_s_ratio_b1": speed[1][0] / speed[1][1],
        "tokens_per_s_ratio_b16": speed[16][0] / speed[16][1],
        "latent_tokens_per_s_b1": speed[1][0], "ar_tokens_per_s_b1": speed[1][1],
        "latent_tokens_per_s_b16": speed[16][0], "ar_tokens_per_s_b16": speed[16][1],
        "latent_ar_perplexity": q_latent["ar_perplexity"], "ar_ar_perplexity": q_ar["ar_perplexity"],
        "reference_ar_perplexity": ref_ppl,
        "latent_minilm_similarity": q_latent["minilm_similarity"], "ar_minilm_similarity": q_ar["minilm_similarity"],
        "latent_repetition_rate": q_latent["repetition_rate"], "ar_repetition_rate": q_ar["repetition_rate"],
        "latent_mean_tokens": q_latent["mean_tokens"], "ar_mean_tokens": q_ar["mean_tokens"],
        "latent_parameters": latent_params, "ar_parameters": ar.num_parameters(), "prompts": len(prompts),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
