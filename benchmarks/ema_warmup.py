"""What EMA warm-up does to a trained prior: one training run, two EMAs of the same weights.

    python benchmarks/ema_warmup.py configs/text_prior.yaml [--run-dir runs/text-prior] [overrides ...]
    python benchmarks/ema_warmup.py configs/toy_label_to_vector.yaml --run-dir runs/ema-toy

Trains the config (`latentbridge train`) while a second EMA follows the same weights with the other
`train.ema_warmup` setting: the training trajectory is one and the same, so the two EMAs differ only by
warm-up. The run directory keeps the config's own EMA as usual; the other one is written beside it as
ema_other.safetensors. Then, on the first task's held-out examples (test split), for the raw weights and both
EMAs: the flow-matching loss (same noise and times for all three, 4 draws) and the mean velocity norm relative
to the raw weights' (the zero-initialised output projection makes an EMA that still holds the first steps'
weights predict velocities that are too small).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402

import latentbridge.train.trainer as trainer_module  # noqa: E402
from latentbridge.config import load_config  # noqa: E402
from latentbridge.flow import interpolate, make_time_sampler  # noqa: E402
from latentbridge.plugins import registries  # noqa: E402
from latentbridge.prior import BlockCausalDiT  # noqa: E402
from latentbridge.runs import load_run  # noqa: E402
from latentbridge.sequence import pack  # noqa: E402
from latentbridge.tasks import TaskMixture, tasks_of  # noqa: E402
from latentbridge.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from latentbridge.train.experiment import train  # noqa: E402
from latentbridge.train.objective import draw_noise, prior_loss  # noqa: E402

OTHER: list[AveragedModel] = []


class TwoEMAs(AveragedModel):
    """The trainer's EMA, plus a shadow EMA with the other warm-up setting, updated from the same weights."""

    def __init__(self, module, multi_avg_fn=None, use_buffers=False):
        super().__init__(module, multi_avg_fn=multi_avg_fn, use_buffers=use_buffers)
        cfg = trainer_module._BENCH_CFG  # set below: the config being trained
        if isinstance(module, torch.nn.ModuleDict) and "prior" in module:
            other = AveragedModel(module, multi_avg_fn=trainer_module.ema_avg_fn(cfg.train.ema_decay, not cfg.train.ema_warmup),
                                  use_buffers=use_buffers)
            OTHER.append(other)
            self._other = other
        else:
            self._other = None

    def update_parameters(self, model):
        super().update_parameters(model)
        if self._other is not None:
            self._other.update_parameters(model)


def prior_weights(state: dict) -> dict:
    return {k.removeprefix("module.").removeprefix("prior."): v for k, v in state.items()
            if k != "n_averaged" and k.removeprefix("module.").startswith("prior.")}


@torch.no_grad()
def held_out_figures(run_dir: Path, weights: dict[str, dict], n: int) -> dict[str, dict[str, float]]:
    run = load_run(run_dir)
    task = tasks_of(run.cfg, run.registries)[0]
    data = TaskMixture([task], run.cfg.seed, run.registries).source(task)
    raw = data.split("test", n)
    lat = {r: run.codecs[r].encode_items(raw[data.field(run.codecs[r].modality, r)], sample=False).unbind() for r in task.roles}
    examples = task.examples(lat)
    samplers = {r: make_time_sampler(s.time_sampler.kind, s.time_sampler.loc, s.time_sampler.scale, run.codecs[r].latent_spec.dim)
                for r, s in run.cfg.codecs.items()}
    packed = pack(examples, run.layout, two_copies=True)
    noisy = packed.meta.noisy & packed.valid
    out: dict[str, dict[str, float]] = {}
    for name, w in weights.items():
        prior = BlockCausalDiT(run.prior.config)
        prior.load_state_dict(w, strict=True)
        prior.eval()
        loss, norm = 0.0, 0.0
        for d in range(4):
            noise = draw_noise(examples, run.layout, samplers, torch.Generator().manual_seed(d))
            loss += float(prior_loss(prior, run.layout, examples, noise=noise, row_length=None)["loss"]) / 4
            gen = torch.Generator().manual_seed(100 + d)  # the velocity at random (x_t, t) of the noisy copies
            t = torch.where(noisy, torch.rand(packed.t.shape, generator=gen), 0.0)
            x = torch.where(noisy[..., None], interpolate(packed.values, torch.randn(packed.values.shape, generator=gen), t), packed.values)
            v = prior(x, t, packed.codec, packed.meta)
            norm += float(v[packed.loss_mask].norm(dim=-1).mean()) / 4
        out[name] = {"held_out_flow_loss": loss, "velocity_norm": norm}
    raw_norm = out["raw"]["velocity_norm"]
    for row in out.values():
        row["velocity_norm_vs_raw"] = row.pop("velocity_norm") / raw_norm
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--run-dir", help="run directory (default runs/<name>); trained here unless it holds ema_other.safetensors")
    ap.add_argument("--examples", type=int, default=256, help="held-out examples")
    args, overrides = ap.parse_known_args()
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    other_path = run_dir / "ema_other.safetensors"
    if not other_path.is_file():
        trainer_module._BENCH_CFG = cfg
        trainer_module.AveragedModel = TwoEMAs
        train(cfg, run_dir, reg=registries())
        state = {k: v.contiguous() for k, v in OTHER[-1].state_dict().items()}
        save_file(state, str(other_path))
    ckpt = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    mine = "warm-up" if cfg.train.ema_warmup else "no warm-up"
    other = "no warm-up" if cfg.train.ema_warmup else "warm-up"
    weights = {"raw": {k.removeprefix("prior."): v for k, v in ckpt["model"].items() if k.startswith("prior.")},
               f"EMA {mine}": prior_weights(ckpt["ema"]), f"EMA {other}": prior_weights(load_file(str(other_path)))}
    figures = held_out_figures(run_dir, weights, args.examples)
    print(f"{cfg.name}: {cfg.train.steps} steps, ema_decay {cfg.train.ema_decay}; {args.examples} held-out examples")
    print(f"{'weights':<16}{'held-out flow loss':>20}{'|v| / raw |v|':>16}")
    for name, row in figures.items():
        print(f"{name:<16}{row['held_out_flow_loss']:>20.4f}{row['velocity_norm_vs_raw']:>16.3f}")
    print(json.dumps({"experiment": cfg.name, "steps": cfg.train.steps, "ema_decay": cfg.train.ema_decay,
                      **{f"{k} {m}": round(v, 5) for k, row in figures.items() for m, v in row.items()}}))


if __name__ == "__main__":
    sys.exit(main())
