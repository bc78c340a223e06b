"""Optimizers and schedules: Muon on the blocks' matrices with AdamW on the rest, exact resume, the lr schedules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from latentbridge.build import build_prior
from latentbridge.config import load_config
from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.plugins import build_registries, make_plugin_manager
from latentbridge.sequence import SequenceLayout
from latentbridge.train.experiment import train
from latentbridge.train.optim import BatchedMuon, MuonWithAdamW, build_optimizer, lr_schedule, muon_parameter

from test_trainer import CONFIG, SMALL, assert_same_checkpoint, losses

MUON = SMALL + ["--train.optimizer=muon"]


@pytest.fixture(scope="module")
def reg():
    return build_registries(make_plugin_manager(autoload=True))


def _prior(reg, overrides=()):
    from latentbridge.build import build_codecs

    cfg = load_config(CONFIG, [*SMALL, *overrides])
    codecs = build_codecs(cfg, reg)
    layout = SequenceLayout.from_specs({r: c.latent_spec for r, c in codecs.items()})
    torch.manual_seed(0)
    return cfg, build_prior(cfg, layout, reg)


def test_lr_schedules_warm_up_then_decay_to_zero():
    cos = [lr_schedule(s, 10, 100) for s in range(100)]
    wsd = [lr_schedule(s, 10, 100, "wsd", 0.2) for s in range(100)]
    assert cos[0] == wsd[0] == pytest.approx(0.1) and cos[9] == wsd[9] == 1.0
    assert all(a >= b for a, b in zip(cos[9:], cos[10:])) and cos[-1] < 1e-3
    assert all(v == 1.0 for v in wsd[10:80])  # constant until the cool-down ...
    assert [round(v, 3) for v in wsd[80:]] == [round((100 - s) / 20, 3) for s in range(80, 100)]  # ... then linear to zero
    assert lr_schedule(99, 10, 100, "constant") == 1.0
    with pytest.raises(ConfigError, match="unknown schedule 'step'; use cosine, wsd, constant"):
        lr_schedule(50, 10, 100, "step")


def test_muon_takes_the_block_matrices_and_adamw_the_rest(reg):
    cfg, prior = _prior(reg, ["--train.optimizer=muon"])
    opt = build_optimizer(prior.named_parameters(), cfg.train, 1e-3)
    assert isinstance(opt, MuonWithAdamW)
    muon_ids = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in prior.named_parameters():
        expected = p.ndim == 2 and name.startswith("blocks.")
        assert (id(p) in muon_ids) == expected, name
        assert muon_parameter(name, p) == expected
    assert len(muon_ids) > 0 and sum(len(g["params"]) for g in opt.param_groups) == len(list(prior.parameters()))


def test_a_muon_step_is_an_orthogonalized_update_and_adamw_takes_the_rest():
    """Muon's first update of a matrix is the gradient orthogonalized (Newton-Schulz): its strong directions, 10:1 in
    the gradient, come out nearly equal; AdamW's first step (lr * sign(grad)) keeps them 2.5:1 or worse. The vector
    parameter gets AdamW's first step. Fails if the matrices go to AdamW."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 4))
    v, _ = torch.linalg.qr(torch.randn(48, 4))
    g = u @ torch.diag(torch.tensor([10.0, 5.0, 2.0, 1.0])) @ v.T + 1e-3 * torch.randn(32, 48)

    def first_update(opt_for):
        w, bias = torch.nn.Parameter(torch.zeros(32, 48)), torch.nn.Parameter(torch.zeros(32))
        opt = opt_for(w, bias)
        w.grad, bias.grad = g.clone(), torch.linspace(-1, 1, 32)
        opt.step()
        sv = torch.linalg.svdvals(w.detach())
        return float(sv[3] / sv[0]), bias.detach()

    muon_ratio, bias_step = first_update(lambda w, b: MuonWithAdamW([w], [b], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0))
    adam_ratio, _ = first_update(lambda w, b: torch.optim.AdamW([w, b], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0))
    assert muon_ratio > 0.55 and adam_ratio < 0.45, (muon_ratio, adam_ratio)
    assert torch.allclose(bias_step, -0.01 * torch.sign(torch.linspace(-1, 1, 32)), atol=1e-5)


def test_a_muon_run_resumes_bit_for_bit(tmp_path, reg):
    whole = tmp_path / "whole"
    train(load_config(CONFIG, MUON), whole, reg=reg, progress=False)
    lost = losses(whole)
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000030")
    (cut / "checkpoints" / "latest").write_text("step_0000020\n")
    train(load_config(CONFIG, MUON), cut, reg=reg, resume=True, progress=False)
    assert_same_checkpoint(whole, cut)
    assert losses(cut) == lost


def test_resume_refuses_another_optimizer(tmp_path, reg):
    run = tmp_path / "run"
    train(load_config(CONFIG, SMALL + ["--train.steps=10"]), run, reg=reg, progress=False)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("optimizer: adamw", "optimizer: muon"))
    with pytest.raises(CheckpointError, match="its optimizer state is adamw's, the config now asks for train.optimizer muon"):
        train(load_config(run / "config.yaml"), run, reg=reg, resume=True, progress=False)


def test_muon_is_refused_under_sharded_fsdp_with_the_fix():
    cfg = load_config(CONFIG, MUON)
    with pytest.raises(ConfigError, match="Muon needs each weight matrix whole.*train.parallel: ddp"):
        build_optimizer([("blocks.0.w", torch.nn.Parameter(torch.zeros(2, 2)))], cfg.train, 1e-3, sharded=True)


@pytest.mark.parametrize("adjust, nesterov", [("match_rms_adamw", True), ("original", False), ("spectral_unclamped", True), (None, True)])
def test_batched_muon_makes_torchs_muon_updates(adjust, nesterov):
    """Stacking same-shaped matrices into one Newton-Schulz iteration changes nothing: after several steps the weights
    and momentum buffers equal torch.optim.Muon's (three 8x12 and two tall 16x4 matrices, one lone 6x6), and the state
    of one loads into the other (checkpoints from before the change resume)."""
    shapes = [(8, 12), (16, 4), (8, 12), (6, 6), (16, 4), (8, 12)]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    runs = []
    for cls in (torch.optim.Muon, BatchedMuon):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = cls(params, lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        runs.append((params, opt))
    (ref, ref_opt), (mine, mine_opt) = runs
    assert all(torch.equal(a, b) for a, b in zip(ref, mine))
    assert all(torch.equal(ref_opt.state[a]["momentum_buffer"], mine_opt.state[b]["momentum_buffer"]) for a, b in zip(ref, mine))
    assert not torch.equal(ref[0], start[0])  # the weights moved
    resumed = BatchedMuon([torch.nn.Parameter(w.clone()) for w in start], lr=0.02, adjust_lr_fn=adjust)
    resumed.load_state_dict(ref_opt.state_dict())
    assert torch.equal(resumed.state_dict()["state"][0]["momentum_buffer"], ref_opt.state_dict()["state"][0]["momentum_buffer"])


def test_batched_muon_iterates_in_the_dtype_it_is_given():
    """ns_dtype=float32 (a run computing in fp32 on a CPU) gives the Newton-Schulz update of an fp64 iteration to fp32
    rounding; the default, bf16 as torch's, is off by bf16 rounding. Fails if the dtype is not passed through."""
    from latentbridge.train.optim import newton_schulz

    gen = torch.Generator().manual_seed(0)
    start, grad = torch.randn(24, 40, generator=gen), torch.randn(24, 40, generator=gen)
    group = torch.optim.Muon([torch.nn.Parameter(start.clone())]).param_groups[0]
    exact = newton_schulz(grad.double(), group["ns_coefficients"], group["ns_steps"], group["eps"], torch.float64)

    def update(**kwargs):
        w = torch.nn.Parameter(start.clone())
        opt = BatchedMuon([w], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, adjust_lr_fn=None, **kwargs)
        w.grad = grad.clone()
        opt.step()
        return start - w.detach()  # lr 1, no decay, no momentum, 24 x 40 (wide): the orthogonalized gradient itself

    fp32, bf16 = (update(ns_dtype=torch.float32) - exact).abs().max(), (update() - exact).abs().max()
    assert fp32 < 1e-5 < 1e-3 < bf16, (fp32, bf16)


def test_a_run_computing_in_fp32_on_a_cpu_iterates_muon_in_fp32(reg):
    from latentbridge.build import build_codecs
    from latentbridge.tasks import tasks_of
    from latentbridge.train.trainer import Trainer

    cfg = load_config(CONFIG, [*MUON, "--train.mixed_precision=no"])
    trainer = Trainer(cfg, "unused", build_codecs(cfg, reg), lambda *a: None, tasks=tasks_of(cfg, reg), checkpoints=False,
                      progress=False)
    assert trainer.precision == "no" and trainer._opt.muon.ns_dtype == torch.float32
    assert trainer._meta()["precision"] == "no"  # saved with every checkpoint (state.json)
