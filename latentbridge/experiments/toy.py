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
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from tqdm.auto import tqdm

from latentbridge.codecs import Codec, Latents
from latentbridge.config import ExperimentConfig, dump_yaml, to_dict
from latentbridge.data import GaussianRing
from latentbridge.errors import ConfigError
from latentbridge.evaluate import mean_cov_error, mmd2
from latentbridge.flow import make_time_sampler
from latentbridge.pipeline import generate_latents
from latentbridge.plugins import CodecRegistry, registry as default_registry, resolve_codec_configs
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.sequence import Segment, SequenceLayout
from latentbridge.train.objective import prior_loss

MODALITY_FIELD = {"label": "labels", "vector": "points"}  # which part of the toy data each modality encodes


# --------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------


def build_codecs(cfg: ExperimentConfig, reg: CodecRegistry) -> dict[str, Codec]:
    configs = resolve_codec_configs(cfg, reg)
    codecs = {}
    for role, slot in cfg.codecs.items():
        cls = reg.get(slot.codec)
        if cls.modality not in MODALITY_FIELD:
            raise ConfigError(
                f"codecs.{role}: the toy experiment feeds labels to 'label' codecs and points to 'vector' codecs; "
                f"codec '{slot.codec}' has modality '{cls.modality}'."
            )
        codecs[role] = reg.load(slot.pretrained) if slot.pretrained else cls(configs[role])
    return codecs


def role_items(codecs: dict[str, Codec], points: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    data = {"points": list(points), "labels": labels.tolist()}
    return {role: codec.collate(data[MODALITY_FIELD[codec.modality]]) for role, codec in codecs.items()}


def lr_schedule(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (a multiplier of the peak rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def codec_stage(codecs, data: GaussianRing, cfg: ExperimentConfig, gen: torch.Generator, log) -> None:
    """Train each trainable codec on its own loss, fit its latent stats, freeze it."""
    for role, codec in codecs.items():
        if codec.trainable and cfg.train.codec_steps and not cfg.codecs[role].pretrained:
            codec.train()
            opt = torch.optim.Adam(codec.parameters(), lr=cfg.train.codec_lr)
            for step in range(cfg.train.codec_steps):
                points, labels = data.sample(cfg.train.batch_size, gen)
                terms = codec.loss(role_items({role: codec}, points, labels)[role])
                opt.zero_grad()
                terms["loss"].backward()
                opt.step()
                if step % cfg.train.log_every == 0 or step == cfg.train.codec_steps - 1:
                    log({"stage": "codec", "role": role, "step": step, **{k: v.item() for k, v in terms.items()}})
        codec.freeze()
        points, labels = data.sample(4096, gen)
        codec.fit_stats([role_items({role: codec}, points, labels)[role]])


def encode_examples(codecs, cfg: ExperimentConfig, points, labels, gen, *, mode: str | None = None) -> list[list[Segment]]:
    """One example per data point: the task's cond roles, then its target role."""
    items = role_items(codecs, points, labels)
    latents = {}
    for role in [*cfg.task.cond, cfg.task.target]:
        sample = (mode or cfg.codecs[role].latents) == "sample"
        latents[role] = codecs[role].encode(items[role], sample=sample, generator=gen).unbind()
    return [
        [Segment(r, latents[r][i], "cond") for r in cfg.task.cond] + [Segment(cfg.task.target, latents[cfg.task.target][i], "target")]
        for i in range(len(labels))
    ]


def prior_stage(prior, layout, codecs, data, cfg: ExperimentConfig, gen, log, progress: bool) -> list[float]:
    samplers = {
        role: make_time_sampler(s.time_sampler.kind, s.time_sampler.loc, s.time_sampler.scale, codecs[role].latent_spec.dim)
        for role, s in cfg.codecs.items()
    }
    t = cfg.train
    opt = torch.optim.AdamW(prior.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s, t.warmup_steps, t.steps))
    losses = []
    bar = tqdm(range(t.steps), desc="prior", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for step in bar:
        points, labels = data.sample(t.batch_size, gen)
        with torch.no_grad():
            examples = encode_examples(codecs, cfg, points, labels, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16"):
            terms = prior_loss(prior, layout, examples, samplers, cond_dropout=t.cond_dropout, row_length=t.row_length, generator=gen)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"prior loss became {float(loss)} at step {step}; lower train.lr or enable grad clipping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(prior.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % t.log_every == 0 or step == t.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            log({"stage": "prior", "step": step, "loss": losses[-1], "grad_norm": float(grad_norm),
                 "lr": sched.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - start, 2)})
    return losses


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


def plot_run(run_dir: Path, losses: list[float], samples: dict[float, torch.Tensor], labels: torch.Tensor, data: GaussianRing) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.6, alpha=0.5, label="loss")
    window = max(1, len(losses) // 50)
    smooth = torch.tensor(losses).unfold(0, window, 1).mean(1) if len(losses) >= window else torch.tensor(losses)
    ax.plot(range(window - 1, window - 1 + len(smooth)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title="prior training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=120)
    plt.close(fig)
    if not samples:
        return
    truth, _ = data.sample(len(labels), torch.Generator().manual_seed(0), labels=labels)
    panels = [("truth", truth)] + [(f"generated, guidance {s:g}", x) for s, x in samples.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharex=True, sharey=True)
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=2, vmin=0, vmax=9)
        ax.set(title=title, aspect="equal")
    fig.tight_layout()
    (run_dir / "samples").mkdir(exist_ok=True)
    fig.savefig(run_dir / "samples" / "points.png", dpi=120)
    plt.close(fig)


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig) -> None:
    saved = run_dir / "config.yaml"
    if saved.exists():
        import yaml

        other = (yaml.safe_load(saved.read_text()) or {}).get("name")
        if other != cfg.name:
            raise ConfigError(f"{run_dir} holds a run of experiment '{other}', not '{cfg.name}'. Pick another --run-dir.")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(dump_yaml(cfg))
    (run_dir / "metrics.jsonl").write_text("")


def run(cfg: ExperimentConfig, run_dir: str | Path, *, reg: CodecRegistry | None = None, progress: bool = True) -> dict[str, Any]:
    """Train codecs and prior, evaluate, write the run directory; returns the report."""
    run_dir = Path(run_dir)
    reg = reg or default_registry()
    if not cfg.task.target:
        raise ConfigError("task.target is empty: name the role to generate (e.g. --task.target=point).")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    codecs = build_codecs(cfg, reg)
    prepare_run_dir(run_dir, cfg)
    metrics = (run_dir / "metrics.jsonl").open("a")

    def log(row: dict) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    d = cfg.data
    data = GaussianRing(d.num_classes, d.radius, d.tangential_std, d.radial_std)
    timings = {}
    start = time.perf_counter()
    codec_stage(codecs, data, cfg, gen, log)
    timings["codec_stage_s"] = time.perf_counter() - start

    layout = SequenceLayout.from_specs({role: codecs[role].latent_spec for role in cfg.codecs})
    p = cfg.prior
    pcfg = prior_config(p.preset, layout.dims, width=p.width, depth=p.depth, heads=p.heads, mlp_ratio=p.mlp_ratio, attention=p.attention)
    prior = BlockCausalDiT(pcfg)
    start = time.perf_counter()
    losses = prior_stage(prior, layout, codecs, data, cfg, gen, log, progress)
    timings["prior_stage_s"] = time.perf_counter() - start
    prior.eval()

    for role, codec in codecs.items():
        codec.save_pretrained(run_dir / "codecs" / role)
    (run_dir / "prior").mkdir(exist_ok=True)
    save_model(prior, str(run_dir / "prior" / "model.safetensors"))
    (run_dir / "prior" / "config.json").write_text(json.dumps({**to_dict(pcfg), "streams": layout.names}, indent=2))

    start = time.perf_counter()
    report = evaluate(prior, layout, codecs, data, cfg)
    timings["eval_s"] = time.perf_counter() - start
    samples = report.pop("samples")
    labels = torch.arange(cfg.eval.samples) % data.num_classes
    plot_run(run_dir, losses, samples, labels, data)
    report.update(experiment=cfg.name, prior_parameters=prior.num_parameters(), final_loss=sum(losses[-50:]) / len(losses[-50:]),
                  timings={k: round(v, 1) for k, v in timings.items()}, passed=all(c["pass"] for c in report["checks"].values()))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics.close()
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
