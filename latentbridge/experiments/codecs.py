"""Codec reports: a trained codec on held-out data, with reconstructions to look at and listen to.

    evaluate_codec(codec, splits)   the codec's diagnostics averaged over each split's items (image:
                                    PSNR, SSIM; audio: log-mel L1, multi-resolution STFT distance; text:
                                    token / sequence reconstruction, also under latent noise, MiniLM
                                    similarity; all: rate, active channels)
    codec_report(...)               evaluate_codec on the data source's held-out splits (its test split and
                                    its out-of-domain set: photos, real recordings, pydoc), merged into the
                                    run's report.json, and reconstructions written to samples/
    write_reconstructions(...)      originals beside reconstructions: a PNG grid (images), WAV pairs and a
                                    log-mel panel (audio), a text file (text)
    reconstruct(path, ...)          all of it for a saved codec or a run directory, optionally on your own
                                    files (`latentbridge reconstruct`)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from latentbridge.codecs import Codec, Latents
from latentbridge.config import DataConfig, ExperimentConfig
from latentbridge.data.sources import field_for
from latentbridge.errors import ConfigError

NOISE_LEVELS = (0.1, 0.25)
IN_DOMAIN = ("train", "validation", "test")


def _batches(items: Sequence[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def split_label(name: str, source: Any = None) -> str:
    """How a held-out split is named in reports: the source's own label (`test emoji`), the split itself
    (`test`), or `NAME (out of domain)`."""
    labels = getattr(source, "held_out", {})
    return labels.get(name) or (name if name in IN_DOMAIN else f"{name} (out of domain)")


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
    from latentbridge.evaluate.text import minilm_embed

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


@torch.no_grad()
def write_reconstructions(codec: Codec, items: Sequence[Any], names: Sequence[str], directory: Path, stem: str) -> list[Path]:
    """Originals beside their reconstructions (posterior mean), in `directory`, by the codec's modality."""
    from latentbridge.evaluate import media

    directory = Path(directory)
    items = list(items)
    recon = [r for chunk in _batches(items, 64) for r in codec.decode(codec.encode_items(chunk))]
    if codec.modality == "image":
        return [media.save_png(media.reconstruction_grid(items, recon), directory / f"{stem}.png")]
    if codec.modality == "audio":
        sr = int(getattr(codec, "sample_rate", 16000))
        written = []
        for i, (a, b, name) in enumerate(zip(items, recon, names)):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(name))[:40]
            written.append(media.save_wav(a, sr, directory / stem / f"{i:02d}_{slug}_original.wav"))
            written.append(media.save_wav(b, sr, directory / stem / f"{i:02d}_{slug}_reconstruction.wav"))
        if hasattr(codec, "log_mel"):
            written.append(media.log_mel_panels(list(zip(items, recon))[:6], list(names)[:6], codec.log_mel, directory / f"{stem}_log_mel.png"))
        return written
    path = directory / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"[{i}] {a}\n    -> {b}\n" for i, (a, b) in enumerate(zip(items, recon))))
    return [path]


def _names(split: dict[str, list], field: str, n: int) -> list[str]:
    others = [k for k in split if k != field]
    return [str(x) for x in split[others[0]]][:n] if others else [f"item {i}" for i in range(n)]


def codec_report(cfg: ExperimentConfig, run_dir: Path, codecs: dict[str, Codec], source: Any, role: str,
                 shown: int = 16, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate the role's codec on the source's held-out splits (or the named ones) with cfg.eval.samples
    items each; write report.json (merged into an existing one) and samples/reconstructions_<split> (the
    first `shown` items of each split)."""
    codec = codecs[role]
    field = field_for(source, role, codec.modality)
    n = cfg.eval.samples
    start = time.perf_counter()
    splits, written = {}, []
    for name in names or getattr(source, "held_out", {"test": "test"}):
        data = source.split(name, n)
        if not data[field]:
            continue  # e.g. a small data set with no test clip of one engine
        splits[split_label(name, source)] = data[field]
        written += write_reconstructions(codec, data[field][:shown], _names(data, field, shown), run_dir / "samples",
                                         f"reconstructions_{name}")
    result = evaluate_codec(codec, splits, seed=cfg.seed)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line] \
        if (run_dir / "metrics.jsonl").is_file() else []
    codec_rows = [r for r in rows if r.get("stage") == "codec"]
    report = _read_report(run_dir)
    report.setdefault("codecs", {})[role] = {
        "codec": codec.name, "config": codec.latent_spec.__dict__, "parameters": sum(p.numel() for p in codec.parameters()),
        "train_steps": codec_rows[-1]["step"] + 1 if codec_rows else 0,
        "train_s": codec_rows[-1]["elapsed_s"] if codec_rows else None,
        "held_out": result, "eval_s": round(time.perf_counter() - start, 1),
        "reconstructions": [str(p.relative_to(run_dir)) for p in written],
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
# latentbridge reconstruct
# --------------------------------------------------------------------------------------------------


def default_data(codec: Codec) -> DataConfig:
    """The project's data for a codec's modality, shaped to the codec (image size, sample rate)."""
    if codec.modality == "image":
        return DataConfig(name="images", image_size=int(getattr(codec.config, "image_size", 32)))
    if codec.modality == "audio":
        return DataConfig(name="speech", sample_rate=int(getattr(codec, "sample_rate", 16000)))
    if codec.modality == "text":
        return DataConfig(name="text")
    raise ConfigError(f"codec '{codec.name}' has modality '{codec.modality}', for which latentbridge has no data set; "
                      "pass your own items with --files.")


def read_files(codec: Codec, files: Sequence[str]) -> list[Any]:
    """Your own files as items of the codec's modality: images (centre-cropped, resized), audio (mono,
    resampled), text (one item per non-empty line)."""
    items: list[Any] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"--files: {path} does not exist")
        if codec.modality == "image":
            from PIL import Image, UnidentifiedImageError

            from latentbridge.data.images import centre_square, resize

            try:
                img = np.asarray(Image.open(path).convert("RGB"))
            except UnidentifiedImageError:
                raise ConfigError(f"--files: {path} is not an image PIL can read") from None
            items.append(resize(centre_square(img), int(getattr(codec.config, "image_size", 32))))
        elif codec.modality == "audio":
            from latentbridge.data.speech import read_audio

            items.append(read_audio(path, int(getattr(codec, "sample_rate", 16000))))
        elif codec.modality == "text":
            items += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            raise ConfigError(f"--files: latentbridge cannot read files for modality '{codec.modality}'")
    return items


def reconstruct(path: str | Path, out: str | Path | None = None, *, role: str | None = None, splits: Sequence[str] | None = None,
                n: int = 16, files: Sequence[str] = (), seed: int = 0) -> dict[str, Any]:
    """Reconstructions and diagnostics of a trained codec (a saved codec directory or a run directory).

    A run directory without `out` or `files` gets its own held-out report (codec_report: report.json, with
    the config's eval.samples items per split, and samples/). Otherwise writes <out>/reconstructions_<split>.png
    (images) or <out>/reconstructions_<split>/*.wav (audio) and <out>/reconstructions.json, from n items
    per split (or your files). Returns the diagnostics per split."""
    from latentbridge.data.sources import make_source
    from latentbridge.plugins import registry

    path = Path(path)
    reg = registry()
    if (path / "config.yaml").is_file():
        from latentbridge.config import load_config

        cfg = load_config(path / "config.yaml")
        role = role or cfg.train.codec_role or cfg.task.target
        if role not in cfg.codecs:
            raise ConfigError(f"{path}: no codec role '{role}' (roles: {', '.join(cfg.codecs)}); pass --role.")
        if not (path / "codecs" / role / "codec.json").is_file():
            raise ConfigError(f"{path} has no trained codec for role '{role}' yet (codecs/{role}/ is missing); finish its training first.")
        codec = reg.load(path / "codecs" / role).freeze()
        if not files and out is None:  # the run's own held-out report: report.json and samples/
            entry = codec_report(cfg, path, {role: codec}, make_source(cfg.data, cfg.seed), role, shown=n, names=splits)
            return {"codec": codec.name, "held_out": entry["held_out"], "written": [path / p for p in entry["reconstructions"]],
                    "out": path / "samples", "report": path / "report.json"}
        data = cfg.data
        out = Path(out) if out else path / "samples"
    elif (path / "codec.json").is_file():
        codec = reg.load(path).freeze()
        data = default_data(codec) if not files else None
        out = Path(out) if out else Path("reconstructions") / codec.name
    else:
        raise ConfigError(f"{path} is neither a saved codec (codec.json) nor a run directory (config.yaml).")
    sets: dict[str, tuple[list, list[str]]] = {}
    source = None
    if files:
        items = read_files(codec, files)
        sets["files"] = (items, [Path(f).stem for f in files] if len(items) == len(files) else [f"line {i}" for i in range(len(items))])
    else:
        source = make_source(data, seed)
        field = field_for(source, role or codec.modality, codec.modality)
        for name in splits or getattr(source, "held_out", {"test": "test"}):
            split = source.split(name, n)
            if split[field]:
                sets[name] = (split[field], _names(split, field, len(split[field])))
    result, written = {}, []
    for name, (items, names) in sets.items():
        written += write_reconstructions(codec, items, names, out, f"reconstructions_{name}")
        result.update(evaluate_codec(codec, {split_label(name, source): items}, seed=seed, similarity=False))
    out.mkdir(parents=True, exist_ok=True)
    (out / "reconstructions.json").write_text(json.dumps({"codec": codec.name, "held_out": result,
                                                           "files": [str(p) for p in written]}, indent=2) + "\n")
    return {"codec": codec.name, "held_out": result, "written": written, "out": out, "report": out / "reconstructions.json"}
