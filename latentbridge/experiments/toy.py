"""Toy cross-modal experiment: class labels <-> 2-D points through one prior.

Uses the toy codec plugin (`label`, `vector`) and data whose density is known (GaussianRing), so
every score is exact. Stages:
  1. codec stage — each trainable codec fits its own loss on fresh data; stats are fitted; frozen;
  2. prior stage — flow matching over examples [cond segments..., target] in the two-copy layout,
     dropping the conditions with probability `train.cond_dropout` (for guidance);
  3. evaluation — generate block by block with the KV cache, decode, score against the truth for
     each guidance scale, with a shuffled-condition control.
Writes a run directory: config.yaml, metrics.jsonl, codecs/<role>/, prior/, samples/, loss.png and
report.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig
from latentbridge.data import GaussianRing
from latentbridge.data.sources import RingSource
from latentbridge.errors import ConfigError
from latentbridge.evaluate import mean_cov_error, mmd2
from latentbridge.experiments.common import load_run, train  # noqa: F401  (the toy's train/load_run are the generic ones)
from latentbridge.pipeline import generate_latents
from latentbridge.plugins import CodecRegistry
from latentbridge.sequence import Segment, task_examples


# --------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------


def role_items(codecs: dict[str, Codec], points: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    raw = {"points": list(points), "labels": labels.tolist()}
    return {role: codec.collate(raw[RingSource.fields[codec.modality]]) for role, codec in codecs.items()}


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def encode_examples(codecs, cfg: ExperimentConfig, points, labels, gen, *, mode: str | None = None) -> list[list[Segment]]:
    """One example per data point: the task's cond roles, then its target role."""
    items = role_items(codecs, points, labels)
    latents = {}
    for role in [*cfg.task.cond, cfg.task.target]:
        sample = (mode or cfg.codecs[role].latents) == "sample"
        latents[role] = codecs[role].encode(items[role], sample=sample, generator=gen).unbind()
    return task_examples(cfg.task.cond, cfg.task.target, latents)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(prior, layout, codecs, cfg: ExperimentConfig, points, labels, guidance: float, seed: int) -> list:
    prompts = [ex[:-1] for ex in encode_examples(codecs, cfg, points, labels, None, mode="mean")]
    target = cfg.task.target
    spec = codecs[target].latent_spec
    s = cfg.sampling
    latents = generate_latents(prior, layout, prompts, target, spec.tokens_per_item or spec.block_size, steps=s.steps,
                               solver=s.solver, shift=s.shift, guidance=guidance, guidance_interval=s.guidance_interval,
                               generator=torch.Generator().manual_seed(seed))
    return codecs[target].decode(Latents(codecs[target].name, torch.stack(latents), torch.full((len(latents),), latents[0].shape[0])))


def score_points(data: GaussianRing, generated: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    """Label -> point: does each point look like its class (Bayes classifier), and per-class MMD to the truth."""
    out = {"class_agreement": float((data.bayes_label(generated) == labels).float().mean())}
    mmds, means, covs = [], [], []
    for k in range(data.num_classes):
        sel = labels == k
        if int(sel.sum()) < 10:
            continue
        truth, _ = data.sample(int(sel.sum()), gen, labels=torch.full((int(sel.sum()),), k))
        mmds.append(mmd2(generated[sel], truth))
        m, c = mean_cov_error(generated[sel], truth)
        means.append(m)
        covs.append(c)
    out.update(mmd2=sum(mmds) / len(mmds), mean_error=sum(means) / len(means), cov_error=sum(covs) / len(covs))
    return out


def evaluate(prior, layout, codecs, data: GaussianRing, cfg: ExperimentConfig) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed + 1000)
    n = cfg.eval.samples
    k = data.num_classes
    labels = torch.arange(n) % k
    points, _ = data.sample(n, gen, labels=labels)
    shuffled = labels[torch.randperm(n, generator=gen)]
    target_modality = codecs[cfg.task.target].modality
    report: dict[str, Any] = {"direction": f"{'+'.join(cfg.task.cond) or 'nothing'} -> {cfg.task.target}", "by_guidance": {}}
    samples = {}
    for scale in cfg.eval.guidance_scales:
        out = generate(prior, layout, codecs, cfg, points, labels, scale, cfg.seed + 7)
        if target_modality == "vector":
            generated = torch.stack(out).float()
            samples[scale] = generated
            row = score_points(data, generated, labels, gen)
            row["control_class_agreement"] = float((data.bayes_label(generated) == shuffled).float().mean())
        else:
            predicted = torch.tensor(out)
            row = {"accuracy": float((predicted == labels).float().mean()),
                   "agrees_with_bayes": float((predicted == data.bayes_label(points)).float().mean()),
                   "control_accuracy": float((predicted == shuffled).float().mean())}
        report["by_guidance"][str(scale)] = row
    if target_modality == "vector":
        truth, _ = data.sample(n, gen, labels=labels)
        marginal, _ = data.sample(n, gen)
        report["reference"] = {
            "true_sample_class_agreement": float((data.bayes_label(truth) == labels).float().mean()),
            "label_blind_mmd2": score_points(data, marginal, labels, gen)["mmd2"],
            "noise_floor_mmd2": score_points(data, truth, labels, gen)["mmd2"],
            "chance_class_agreement": 1.0 / k,
        }
    else:
        post = data.posterior(points)
        report["reference"] = {
            "bayes_accuracy": float((data.bayes_label(points) == labels).float().mean()),
            "posterior_sampling_accuracy": float(post[torch.arange(n), labels].mean()),
            "chance_accuracy": 1.0 / k,
        }
    report["checks"] = thresholds(report, target_modality)
    report["samples"] = samples
    return report


def thresholds(report: dict[str, Any], target_modality: str) -> dict[str, dict[str, Any]]:
    """Pass/fail against stated bars (the reasons are in the README's toy-experiment section)."""
    rows = report["by_guidance"]
    base = rows["1.0"] if "1.0" in rows else next(iter(rows.values()))
    guided = [r for s, r in rows.items() if float(s) > 1.0]
    ref = report["reference"]
    checks = {}
    if target_modality == "vector":
        bar = 0.9 * ref["true_sample_class_agreement"]
        checks["class_agreement >= 0.9 x true samples'"] = {"value": base["class_agreement"], "bar": bar, "pass": base["class_agreement"] >= bar}
        bar = 0.1 * ref["label_blind_mmd2"]
        checks["mmd2 <= 0.1 x label-blind baseline"] = {"value": base["mmd2"], "bar": bar, "pass": base["mmd2"] <= bar}
        bar = 0.5 * base["class_agreement"]
        checks["shuffled control <= 0.5 x agreement"] = {"value": base["control_class_agreement"], "bar": bar, "pass": base["control_class_agreement"] <= bar}
        if guided:
            best = max(r["class_agreement"] for r in guided)
            checks["guidance raises class_agreement"] = {"value": best, "bar": base["class_agreement"], "pass": best > base["class_agreement"]}
    else:
        bar = ref["posterior_sampling_accuracy"] - 0.05
        checks["accuracy >= posterior-sampling accuracy - 0.05"] = {"value": base["accuracy"], "bar": bar, "pass": base["accuracy"] >= bar}
        bar = 0.5 * base["accuracy"]
        checks["shuffled control <= 0.5 x accuracy"] = {"value": base["control_accuracy"], "bar": bar, "pass": base["control_accuracy"] <= bar}
        if guided:
            best = max(r["accuracy"] for r in guided)
            checks["guidance raises accuracy"] = {"value": best, "bar": base["accuracy"], "pass": best > base["accuracy"]}
    return checks


# --------------------------------------------------------------------------------------------------
# Plots and the run
# --------------------------------------------------------------------------------------------------


def plot_samples(run_dir: Path, samples: dict[float, torch.Tensor], labels: torch.Tensor, data: GaussianRing) -> None:
    """samples/points.png: the truth beside the generated points at each guidance scale."""
    if not samples:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, _ = data.sample(len(labels), torch.Generator().manual_seed(0), labels=labels)
    panels = [("truth", truth)] + [(f"generated, guidance {s:g}", x) for s, x in samples.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharex=True, sharey=True)
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=2, vmin=0, vmax=9)
        ax.set(title=title, aspect="equal")
    fig.tight_layout()
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    fig.savefig(run_dir / "samples" / "points.png", dpi=120)
    plt.close(fig)


def run(cfg: ExperimentConfig, run_dir: str | Path, *, reg: CodecRegistry | None = None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Train (see `train`), evaluate, write samples, plots and report.json; returns the report."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    codecs, prior, layout = train(cfg, run_dir, reg=reg, resume=resume, progress=progress)
    if prior is None:
        raise ConfigError("train.stage=codec trains no prior, so there is nothing to evaluate; use `latentbridge train`.")
    train_s = time.perf_counter() - start
    return evaluate_run(cfg, run_dir, codecs, prior, layout, {"train_s": train_s})


def evaluate_run(cfg: ExperimentConfig, run_dir: Path, codecs, prior, layout, timings: dict[str, float]) -> dict[str, Any]:
    d = cfg.data
    data = GaussianRing(d.num_classes, d.radius, d.tangential_std, d.radial_std)
    start = time.perf_counter()
    report = evaluate(prior, layout, codecs, data, cfg)
    timings = {**timings, "eval_s": time.perf_counter() - start}
    samples = report.pop("samples")
    labels = torch.arange(cfg.eval.samples) % data.num_classes
    plot_samples(run_dir, samples, labels, data)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    prior_rows = [r for r in rows if r["stage"] == cfg.train.stage]
    report.update(experiment=cfg.name, prior_parameters=prior.num_parameters(),
                  final_loss=prior_rows[-1]["loss"] if prior_rows else None,
                  timings={k: round(v, 1) for k, v in timings.items()}, passed=all(c["pass"] for c in report["checks"].values()))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['experiment']}: {report['direction']}  ({report['prior_parameters']:,} prior parameters, "
             f"timings {report['timings']})"]
    keys = list(next(iter(report["by_guidance"].values())))
    lines.append("guidance  " + "  ".join(f"{k:>24}" for k in keys))
    for scale, row in report["by_guidance"].items():
        lines.append(f"{scale:>8}  " + "  ".join(f"{row[k]:>24.4f}" for k in keys))
    lines.append("reference: " + ", ".join(f"{k}={v:.4f}" for k, v in report["reference"].items()))
    for name, c in report["checks"].items():
        lines.append(f"  [{'pass' if c['pass'] else 'FAIL'}] {name}: {c['value']:.4f} vs bar {c['bar']:.4f}")
    return "\n".join(lines)
