"""Codec reports: a trained codec on held-out data, with reconstructions to look at and listen to.

    evaluate_codec(codec, splits)   the codec's own diagnostics averaged over each split's items (whatever the
                                    codec reports: PSNR/SSIM, log-mel distance, token accuracy; always rate
                                    and active channels)
    codec_report(...)               evaluate_codec on the data set's held-out splits (its test split and its
                                    extra held-out sets), merged into the run's report.json, and
                                    reconstructions written to samples/
    write_reconstructions(...)      originals and reconstructions through the codec's own write_items
    reconstruct(path, ...)          all of it for a saved codec or a run directory, optionally on your own
                                    files read by the codec's read_items (`latentbridge reconstruct`)

Nothing here knows a modality: the codec writes and reads its own files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig
from latentbridge.data.base import SPLITS, Dataset
from latentbridge.errors import ConfigError
from latentbridge.evaluate.report import read_metrics, update_report

NOISE_LEVELS = (0.1, 0.25)


def _batches(items: Sequence[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def split_label(name: str, source: Dataset | None = None) -> str:
    """How a held-out split is named in reports: the source's own label (`test emoji`), the split itself
    (`test`), or `NAME (out of domain)`."""
    labels = source.held_out if source is not None else {}
    return labels.get(name) or (name if name in SPLITS else f"{name} (out of domain)")


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
def evaluate_codec(codec: Codec, splits: dict[str, Sequence[Any]], *, batch_size: int = 128, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per split: the codec's diagnostics averaged over items (and its prompt diagnostics, if it has them)."""
    out: dict[str, dict[str, float]] = {}
    for name, items in splits.items():
        gen = torch.Generator().manual_seed(seed)
        totals: dict[str, float] = {}
        for chunk in _batches(list(items), batch_size):
            for k, v in codec.diagnostics(codec.collate(chunk)).items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
        row = {k: v / len(items) for k, v in totals.items()}
        if hasattr(codec, "prompt_diagnostics"):
            row.update(codec.prompt_diagnostics(list(items), gen))
        row["items"] = len(items)
        out[name] = row
    return out


@torch.no_grad()
def write_reconstructions(codec: Codec, items: Sequence[Any], names: Sequence[str], directory: Path, stem: str) -> list[Path]:
    """Originals and their reconstructions (posterior mean) through the codec's write_items, into
    `directory/stem/originals` and `directory/stem/reconstructions` (nothing if the codec writes no files)."""
    items = list(items)
    try:
        written = codec.write_items(items, Path(directory) / stem / "originals", list(names))
    except NotImplementedError:
        return []  # a codec that writes no files: nothing to decode for
    recon = [r for chunk in _batches(items, 64) for r in codec.decode(codec.encode_items(chunk))]
    return written + codec.write_items(recon, Path(directory) / stem / "reconstructions", list(names))


def _names(split: dict[str, list], field: str, n: int) -> list[str]:
    others = [k for k in split if k != field]
    return [str(x) for x in split[others[0]]][:n] if others else [f"item {i}" for i in range(n)]


def codec_report(cfg: ExperimentConfig, run_dir: Path, codecs: dict[str, Codec], source: Dataset, role: str,
                 shown: int = 16, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate the role's codec on the source's held-out splits (or the named ones) with cfg.eval.samples
    items each; write report.json (merged into an existing one) and samples/reconstructions_<split> (the
    first `shown` items of each split)."""
    codec = codecs[role]
    field = source.field(codec.modality, role)
    n = cfg.eval.samples
    start = time.perf_counter()
    splits, written = {}, []
    for name in names or source.held_out:
        data = source.split(name, n)
        if not data[field]:
            continue  # e.g. a small data set with no test clip of one engine
        splits[split_label(name, source)] = data[field]
        written += write_reconstructions(codec, data[field][:shown], _names(data, field, shown), run_dir / "samples",
                                         f"reconstructions_{name}")
    result = evaluate_codec(codec, splits, seed=cfg.seed)
    codec_rows = [r for r in read_metrics(run_dir) if r.get("stage") == "codec"]
    entry = {
        "codec": codec.name, "config": codec.latent_spec.__dict__, "parameters": sum(p.numel() for p in codec.parameters()),
        "train_steps": codec_rows[-1]["step"] + 1 if codec_rows else 0,
        "train_s": codec_rows[-1]["elapsed_s"] if codec_rows else None,
        "held_out": result, "eval_s": round(time.perf_counter() - start, 1),
        "reconstructions": [str(p.relative_to(run_dir)) for p in written],
    }
    update_report(run_dir, lambda report: report.setdefault("codecs", {}).__setitem__(role, entry))
    return entry


# --------------------------------------------------------------------------------------------------
# latentbridge reconstruct
# --------------------------------------------------------------------------------------------------


def read_files(codec: Codec, files: Sequence[str]) -> list[Any]:
    """Your files as items of the codec, read by the codec itself (Codec.read_items), with clear errors."""
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--files: {', '.join(missing)} does not exist")
    try:
        return list(codec.read_items([Path(f) for f in files]))
    except NotImplementedError as err:
        raise ConfigError(f"--files: {err}") from None


def reconstruct(path: str | Path, out: str | Path | None = None, *, role: str | None = None, splits: Sequence[str] | None = None,
                n: int = 16, files: Sequence[str] = (), data: str | None = None, seed: int = 0, reg: Any = None) -> dict[str, Any]:
    """Reconstructions and diagnostics of a trained codec (a saved codec directory or a run directory).

    A run directory without `out` or `files` gets its own held-out report (codec_report: report.json, with
    the config's eval.samples items per split, and samples/). Otherwise writes <out>/reconstructions_<split>/
    (the codec's own files: originals and reconstructions) and <out>/reconstructions.json, from n items per
    held-out split of the run's data set, of the registered data set `data`, or of your files (read by the
    codec). Returns the diagnostics per split."""
    from latentbridge.plugins import registries
    from latentbridge.runs import read_config
    from latentbridge.tasks import tasks_of

    path = Path(path)
    reg = reg or registries()
    spec = None
    if (path / "config.yaml").is_file():
        cfg = read_config(path)
        role = role or cfg.train.codec_role or cfg.task.target
        if role not in cfg.codecs:
            raise ConfigError(f"{path}: no codec role '{role}' (roles: {', '.join(cfg.codecs)}); pass --role.")
        if not (path / "codecs" / role / "codec.json").is_file():
            raise ConfigError(f"{path} has no trained codec for role '{role}' yet (codecs/{role}/ is missing); finish its training first.")
        codec = reg.codecs.load(path / "codecs" / role).freeze()
        spec = next(t.data for t in tasks_of(cfg, reg) if role in t.roles)
        if not files and out is None and data is None:  # the run's own held-out report: report.json and samples/
            source = reg.datasets.create(spec.name, spec.config, cfg.seed)
            entry = codec_report(cfg, path, {role: codec}, source, role, shown=n, names=splits)
            return {"codec": codec.name, "held_out": entry["held_out"], "written": [path / p for p in entry["reconstructions"]],
                    "out": path / "samples", "report": path / "report.json"}
        out = Path(out) if out else path / "samples"
    elif (path / "codec.json").is_file():
        codec = reg.codecs.load(path).freeze()
        out = Path(out) if out else Path("reconstructions") / codec.name
    else:
        raise ConfigError(f"{path} is neither a saved codec (codec.json) nor a run directory (config.yaml).")
    sets: dict[str, tuple[list, list[str]]] = {}
    source = None
    if files:
        items = read_files(codec, files)
        sets["files"] = (items, [Path(f).stem for f in files] if len(items) == len(files) else [f"item {i}" for i in range(len(items))])
    else:
        if data is not None:
            source = reg.datasets.create(data, None, seed)
        elif spec is not None:
            source = reg.datasets.create(spec.name, spec.config, seed)
        else:
            raise ConfigError(f"{path} is a saved codec: say what to reconstruct with --files (your files) or --data NAME "
                              f"(a registered data set with {codec.modality} items; `latentbridge datasets list`).")
        field = source.field(codec.modality, role)
        for name in splits or source.held_out:
            split = source.split(name, n)
            if split[field]:
                sets[name] = (split[field], _names(split, field, len(split[field])))
    result, written = {}, []
    for name, (items, names) in sets.items():
        written += write_reconstructions(codec, items, names, out, f"reconstructions_{name}")
        result.update(evaluate_codec(codec, {split_label(name, source): items}, seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    (out / "reconstructions.json").write_text(json.dumps({"codec": codec.name, "held_out": result,
                                                           "files": [str(p) for p in written]}, indent=2) + "\n")
    return {"codec": codec.name, "held_out": result, "written": written, "out": out, "report": out / "reconstructions.json"}
