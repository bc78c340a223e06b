"""Text experiments: held-out codec diagnostics and prompted generation through the prior.

    evaluate_codec(...)     a trained codec on held-out splits: its diagnostics (for the Text VAE:
                            token / sequence reconstruction, the same under latent noise at t = 0.1 and
                            0.25, rate, active channels), MiniLM similarity of (noisy) reconstructions to
                            the originals, and prompt reconstruction by prompt-length parity
    evaluate_generation(...) prompts cut from held-out texts, continued block by block until [EOS]:
                            MiniLM similarity to the held-out rest, length, ended share, repetition
Both write into the run directory (report.json, samples/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig
from latentbridge.data.sources import field_for
from latentbridge.evaluate.text import minilm_embed, minilm_similarity, repetition_rate
from latentbridge.pipeline import continue_items

NOISE_LEVELS = (0.1, 0.25)


def _batches(items: Sequence[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def noisy_reconstructions(codec: Codec, items: Sequence[Any], t: float, generator: torch.Generator) -> list[Any]:
    """Decode each item's latents after moving them to flow time t: z_t = (1 - t) z + t * noise (normalized units)."""
    latents = codec.encode_items(items)
    z = latents.values
    if t > 0:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        z = ((1 - t) * z + t * noise) * latents.mask[..., None].to(z.dtype)
    return codec.decode(Latents(latents.codec, z, latents.lengths))


@torch.no_grad()
def evaluate_codec(codec: Codec, splits: dict[str, Sequence[Any]], *, batch_size: int = 128, seed: int = 0,
                   similarity: bool = True) -> dict[str, dict[str, float]]:
    """Per split: the codec's diagnostics averaged over items, plus text-only extras."""
    out: dict[str, dict[str, float]] = {}
    for name, items in splits.items():
        gen = torch.Generator().manual_seed(seed)
        totals: dict[str, float] = {}
        for chunk in _batches(list(items), batch_size):
            for k, v in codec.diagnostics(codec.collate(chunk)).items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
        row = {k: v / len(items) for k, v in totals.items()}
        if codec.modality == "text" and similarity:
            originals = minilm_embed(list(items))
            for t in (0.0, *NOISE_LEVELS):
                recon = [r for chunk in _batches(list(items), batch_size) for r in noisy_reconstructions(codec, chunk, t, gen)]
                key = "minilm_similarity" + ("" if t == 0 else f"_t{t:g}")
                row[key] = float((minilm_embed(recon) * originals).sum(-1).mean())
        if hasattr(codec, "prompt_diagnostics"):
            row.update(codec.prompt_diagnostics(list(items), gen))
        row["items"] = len(items)
        out[name] = row
    return out


def codec_report(cfg: ExperimentConfig, run_dir: Path, codecs: dict[str, Codec], source: Any, role: str) -> dict[str, Any]:
    """Evaluate the role's codec on the held-out splits and write report.json (merged into an existing one)."""
    codec = codecs[role]
    field = field_for(source, role, codec.modality)
    n = cfg.eval.samples
    splits = {"test": source.split("test", n)[field]}
    if codec.modality == "text":
        splits["pydoc (out of domain)"] = source.split("pydoc", n)[field]
    start = time.perf_counter()
    result = evaluate_codec(codec, splits, seed=cfg.seed)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    codec_rows = [r for r in rows if r.get("stage") == "codec"]
    report = _read_report(run_dir)
    report.setdefault("codecs", {})[role] = {
        "codec": codec.name, "config": codec.latent_spec.__dict__, "parameters": sum(p.numel() for p in codec.parameters()),
        "train_steps": codec_rows[-1]["step"] + 1 if codec_rows else 0,
        "train_s": codec_rows[-1]["elapsed_s"] if codec_rows else None,
        "held_out": result, "eval_s": round(time.perf_counter() - start, 1),
    }
    _write_report(run_dir, report)
    return report["codecs"][role]


def _read_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_report(run_dir: Path, report: dict[str, Any]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def format_codec_report(role: str, entry: dict[str, Any]) -> str:
    lines = [f"codec '{entry['codec']}' (role {role}): {entry['parameters']:,} parameters, {entry['train_steps']} steps "
             f"in {entry['train_s']} s"]
    for split, row in entry["held_out"].items():
        lines.append(f"  {split}:")
        lines += [f"    {k:<32} {v:.4f}" if isinstance(v, float) else f"    {k:<32} {v}" for k, v in row.items()]
    return "\n".join(lines)


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
