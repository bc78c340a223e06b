"""Text experiments: prompted generation through the prior (codec reports: latentbridge.experiments.codecs).

    evaluate_generation(...) prompts cut from held-out texts, continued block by block until [EOS]:
                            MiniLM similarity to the held-out rest, length, ended share, repetition
It writes into the run directory (report.json, samples/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from latentbridge.config import ExperimentConfig
from latentbridge.evaluate.text import minilm_similarity, repetition_rate
from latentbridge.experiments.codecs import (  # noqa: F401  (re-exported: codec reports began here)
    NOISE_LEVELS, _batches, _read_report, _write_report, codec_report, evaluate_codec, format_codec_report, noisy_reconstructions,
)
from latentbridge.pipeline import continue_items

# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def cut_prompts(texts: Sequence[str], fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Split each text after `fraction` of its words (at least one word each side): prompts and references."""
    prompts, refs = [], []
    for text in texts:
        words = text.split(" ")
        if len(words) < 2:
            continue
        k = min(len(words) - 1, max(1, round(len(words) * fraction)))
        prompts.append(" ".join(words[:k]))
        refs.append(" ".join(words[k:]))
    return prompts, refs


def generate_text(cfg: ExperimentConfig, codecs, prior, layout, prompts: Sequence[str], *, role: str | None = None,
                  guidance: float = 1.0, seed: int = 0, batch_size: int = 16, max_tokens: int | None = None,
                  progress: bool = False) -> list[str]:
    """Continue each prompt with the run's prior until [EOS] (or max_tokens latents)."""
    from tqdm.auto import tqdm

    role = role or cfg.task.target
    codec = codecs[role]
    s = cfg.sampling
    limit = max_tokens or codec.latent_spec.max_tokens or 4 * codec.latent_spec.block_size
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for chunk in tqdm(list(_batches(list(prompts), batch_size)), desc="generate", disable=not progress, dynamic_ncols=True):
        out += continue_items(prior, layout, codec, role, chunk, limit, steps=s.steps, solver=s.solver, shift=s.shift,
                              guidance=guidance, guidance_interval=s.guidance_interval, generator=gen)
    return out


def evaluate_generation(cfg: ExperimentConfig, run_dir: Path, codecs, prior, layout, source, *, prompts: Sequence[str] | None = None,
                        samples: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Continue held-out prompts (or the given ones); score against the held-out rest; write samples/."""
    role = cfg.task.target
    codec = codecs[role]
    start = time.perf_counter()
    if prompts is None:
        texts = source.split("test", samples or min(cfg.eval.samples, 200))["text"]
        prompts, refs = cut_prompts(texts)
    else:
        refs = None
    outs = generate_text(cfg, codecs, prior, layout, prompts, seed=cfg.seed + 7, progress=progress)
    gen_s = time.perf_counter() - start
    tok = getattr(codec, "tokenizer", None)
    ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outs] if tok is not None else [o.split() for o in outs]
    row: dict[str, Any] = {"prompts": len(prompts), "generate_s": round(gen_s, 1),
                           "mean_tokens": sum(map(len, ids)) / max(1, len(ids)), "repetition_rate_2gram": repetition_rate(ids)}
    if refs is not None:
        # continuations are decoded tokens and carry their own leading space; references were cut at a space
        sims = minilm_similarity([p + o for p, o in zip(prompts, outs)], [p + " " + r for p, r in zip(prompts, refs)])
        row["minilm_similarity_to_reference"] = float(sims.mean())
        if tok is not None:
            parity = torch.tensor([len(tok(p, add_special_tokens=False)["input_ids"]) % 2 for p in prompts])
            for name, sel in (("odd", parity == 1), ("even", parity == 0)):
                if sel.any():
                    row[f"minilm_similarity_{name}_prompts"] = float(sims[sel].mean())
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    with (run_dir / "samples" / "continuations.jsonl").open("w") as f:
        for i, (p, o) in enumerate(zip(prompts, outs)):
            f.write(json.dumps({"prompt": p, "continuation": o, "reference": refs[i] if refs else None}) + "\n")
    (run_dir / "samples" / "continuations.txt").write_text(
        "".join(f"[{i}] {p} >>> {o}\n" for i, (p, o) in enumerate(zip(prompts, outs))))
    report = _read_report(run_dir)
    report["generation"] = row
    _write_report(run_dir, report)
    return {"row": row, "prompts": prompts, "continuations": outs}
