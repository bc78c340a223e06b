"""The shortcut objective (few-step generation): its draws, the step-conditioned prior, the shortcut solver."""

from __future__ import annotations

import pytest
import torch

from latentbridge.config import load_config
from latentbridge.errors import ConfigError
from latentbridge.flow import LogitNormal
from latentbridge.generation import generate_latents
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.sequence import Segment
from latentbridge.train.objective import draw_noise, prior_loss
from test_generation import LAYOUT, make_prior, text

SAMPLERS = {name: LogitNormal(0.0, 1.0) for name in LAYOUT.names}


def examples(n: int = 12) -> list[list[Segment]]:
    return [[Segment("label", torch.randn(1, 2), "cond"), Segment("text", text(9 + i % 4, i, torch.float32), "target")]
            for i in range(n)]


def jump_prior(seed: int = 0) -> BlockCausalDiT:
    torch.manual_seed(seed)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, step_conditioning=True)).double()
    with torch.no_grad():  # leave zero-init so the step span matters
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior.eval()


def test_shortcut_draws_jumps_on_their_grid_and_leaves_the_flow_draws_alone():
    ex = examples(40)
    plain = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(3))
    jumps = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(3), shortcut=(0.25, 16))
    assert plain.d is None and torch.equal(plain.eps, jumps.eps)  # the same noise: the jumps are drawn afterwards
    d, t = jumps.d, jumps.t
    chosen = d > 0
    assert torch.equal(t[~chosen], plain.t[~chosen])  # flow-matching blocks keep their sampler's time
    assert set((2 * d[chosen]).unique().tolist()) <= {1.0, 0.5, 0.25, 0.125}  # 2d = 2^-j down to 2/16
    k = t[chosen] / (2 * d[chosen])
    assert torch.allclose(k, k.round()) and bool((k >= 1).all()) and bool((t[chosen] <= 1).all())  # t on the 2d grid
    blocks = torch.unique_consecutive(torch.stack([d, t]), dim=1).shape[1]
    assert 0.1 < float(chosen.float().mean()) < 0.45 and blocks > 40  # about a quarter, constant within each block


def test_a_step_conditioned_prior_starts_as_the_plain_one():
    """The step embedding starts at zero: a prior initialised from a flow-trained one computes the same velocities."""
    torch.manual_seed(0)
    plain = BlockCausalDiT(prior_config("tiny", LAYOUT.dims))
    torch.manual_seed(0)
    jumping = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, step_conditioning=True))
    jumping.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
        jumping.load_state_dict(plain.state_dict(), strict=False)
    ex = examples(4)
    noise = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(0))
    a = prior_loss(plain, LAYOUT, ex, noise=noise)["loss"]
    b = prior_loss(jumping, LAYOUT, ex, noise=noise)["loss"]
    assert torch.equal(a, b)


def test_the_shortcut_loss_regresses_two_half_jumps_and_trains_the_step_embedding():
    prior = jump_prior().float().train()
    ex = examples(8)
    noise = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(1), shortcut=(0.5, 8))
    loss = prior_loss(prior, LAYOUT, ex, noise=noise)["loss"]
    loss.backward()
    assert prior.step_embed.mlp[2].weight.grad.abs().sum() > 0  # jumps of 2d > 0 reach the step embedding
    plain = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(1))
    assert not torch.equal(loss.detach(), prior_loss(prior, LAYOUT, ex, noise=plain)["loss"].detach())


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_shortcut_generation_cached_equals_uncached(steps):
    prior = jump_prior()
    prompts = [[Segment("label", torch.ones(1, 2, dtype=torch.float64), "cond")],
               [Segment("text", text(7, 9), "target")]]
    kw = dict(steps=steps, solver="shortcut", guidance=2.0, seed=0)
    cached = generate_latents(prior, LAYOUT, prompts, "text", 12, use_cache=True, **kw)
    uncached = generate_latents(prior, LAYOUT, prompts, "text", 12, use_cache=False, **kw)
    assert max(float((a - b).abs().max()) for a, b in zip(cached, uncached)) <= 1e-10
    euler = generate_latents(prior, LAYOUT, prompts, "text", 12, **{**kw, "solver": "euler"})
    assert max(float((a - b).abs().max()) for a, b in zip(cached, euler)) > 1e-4  # the span changes the jump


def test_shortcut_generation_repaints_the_given_positions():
    prior = jump_prior()
    prompt = text(7, 4)  # two whole blocks of 3, then one given latent of a partial block
    blocks = []
    out = generate_latents(prior, LAYOUT, [[Segment("text", prompt, "target")]], "text", 5, steps=2, solver="shortcut",
                           on_block=lambda i, b: blocks.append(b.clone()))
    assert torch.equal(blocks[0][0, 0], prompt[6])  # pinned bit for bit through the jumps
    assert out[0].shape == (5, 4) and not torch.allclose(blocks[0][0, 1:], torch.zeros(2, 4, dtype=torch.float64))


def test_the_shortcut_solver_refuses_a_prior_that_cannot_jump():
    with pytest.raises(ConfigError, match="train.objective=shortcut"):
        generate_latents(make_prior(), LAYOUT, [[Segment("text", text(3, 0), "target")]], "text", 3, solver="shortcut")


def test_the_shortcut_objective_needs_a_step_conditioned_prior():
    from latentbridge.build import build_codecs
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.tasks import tasks_of
    from latentbridge.train.trainer import Trainer
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    config = Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml"
    cfg = load_config(config, ["--train.objective=shortcut"])
    with pytest.raises(ConfigError, match="prior.step_conditioning: true"):
        Trainer(cfg, "unused", build_codecs(cfg, reg), lambda *a: None, tasks=tasks_of(cfg, reg), checkpoints=False, progress=False)
    cfg = load_config(config, ["--train.objective=shortcut", "--prior.step_conditioning=true", "--train.shortcut_finest=48"])
    with pytest.raises(ConfigError, match="power of two"):
        Trainer(cfg, "unused", build_codecs(cfg, reg), lambda *a: None, tasks=tasks_of(cfg, reg), checkpoints=False, progress=False)


@pytest.mark.slow
def test_a_shortcut_prior_on_the_toy_ring_matches_the_data_in_two_steps_where_euler_cannot(tmp_path):
    """1,000 steps of the shortcut objective on the ring (label -> point): at 2 steps per block its samples match the
    data (MMD far under the label-blind baseline) and beat 2 Euler steps of the same prior by a wide margin."""
    from latentbridge.evaluate.run import evaluate_run
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.train.experiment import train
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    cfg = load_config(Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml",
                      ["--prior.step_conditioning=true", "--train.objective=shortcut", "--train.steps=1000",
                       "--eval.samples=1000", "--eval.guidance_scales=[1.0]"])
    run_dir = tmp_path / "run"
    train(cfg, run_dir, reg=reg, progress=False)
    scores = {}
    for solver in ("shortcut", "euler"):
        report = evaluate_run(run_dir, registries=reg, progress=False, log=lambda _: None, steps=2, solver=solver,
                              evaluators=["ring"])
        (task,) = report["tasks"].values()
        scores[solver] = task["ring"]["guidance 1"]
        assert report["sampling"] == {"solver": solver, "steps": 2}
    baseline = task["ring"]["label_blind_mmd2"]
    assert scores["shortcut"]["mmd2"] < 0.1 * baseline  # measured 0.066 vs 0.90
    assert scores["shortcut"]["mmd2"] < 0.3 * scores["euler"]["mmd2"]  # Euler's two steps land between the modes
    assert scores["shortcut"]["class_agreement"] > 0.5  # chance: 0.125


def test_a_flow_prior_initialises_a_shortcut_prior(tmp_path):
    """--init-from a flow-matching run into a shortcut run: every saved weight loads, and the step embedding, absent
    from the checkpoint, keeps its zero output layer (so the prior starts as the flow prior; see above)."""
    from latentbridge.build import build_codecs
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.tasks import tasks_of
    from latentbridge.train.experiment import train
    from latentbridge.train.trainer import Trainer
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    config = Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml"
    small = ["--train.steps=5", "--train.codec_steps=0", "--train.batch_size=16", "--train.checkpoint_every=5"]
    train(load_config(config, small), tmp_path / "flow", reg=reg, progress=False)
    cfg = load_config(config, [*small, "--train.objective=shortcut", "--prior.step_conditioning=true"])
    trainer = Trainer(cfg, tmp_path / "jumps", build_codecs(cfg, reg), lambda *a: None, tasks=tasks_of(cfg, reg),
                      init_from=tmp_path / "flow", checkpoints=False, progress=False)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "flow" / "checkpoints" / "step_0000005" / "model.safetensors"))
    state = trainer.module.trainable.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    step = {k: v for k, v in state.items() if ".step_embed.mlp.2." in k}
    assert step and all(float(v.abs().max()) == 0 for v in step.values())


def test_distilling_with_one_teacher_step_asks_the_student_for_the_teachers_velocity():
    """A student that starts as its teacher (same weights, step embedding at zero) already has the target of one
    teacher Euler step per jump (the teacher's velocity): loss 0. Eight steps follow the teacher's curved path, whose
    mean velocity the student does not have yet."""
    torch.manual_seed(0)
    teacher = BlockCausalDiT(prior_config("tiny", LAYOUT.dims)).double()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, step_conditioning=True)).double()
    student.load_state_dict({**student.state_dict(), **teacher.state_dict()})
    ex = [[Segment(s.codec, s.latents.double(), s.role) for s in e] for e in examples(6)]
    noise = draw_noise(ex, LAYOUT, SAMPLERS, torch.Generator().manual_seed(2), shortcut=(1.0, 8))
    one = prior_loss(student, LAYOUT, ex, noise=noise, teacher=teacher.eval(), teacher_substeps=1)["loss"]
    eight = prior_loss(student, LAYOUT, ex, noise=noise, teacher=teacher.eval(), teacher_substeps=8)["loss"]
    assert float(one.detach()) < 1e-20 and float(eight.detach()) > 1e-6


def _noisy_in_example_order(packed):
    rows, cols = (packed.meta.noisy & packed.valid).nonzero(as_tuple=True)
    order = torch.sort(packed.meta.sample[rows, cols], stable=True).indices
    return rows[order], cols[order]


@pytest.mark.parametrize("row_length", [None, 40])
def test_folded_guidance_is_the_guided_teacher_velocity_of_each_example_alone(row_length):
    """train.teacher_guidance g: per target token v_without + g (v - v_without), v_without with the example's
    conditions removed -- the same on a packed batch (first-fit rows, several examples each) as for each example
    packed alone; an example without conditions is left unguided; g = 1 is the plain teacher."""
    from latentbridge.sequence import pack
    from latentbridge.train.objective import _teacher_velocity

    teacher = make_prior()
    ex = [[Segment(s.codec, s.latents.double(), s.role) for s in e] for e in examples(5)]
    ex.append([Segment("text", text(7, 99), "target")])  # no condition: guidance has nothing to drop
    g = 2.5
    packed = pack(ex, LAYOUT, two_copies=True, row_length=row_length, unread_clean=False)
    rows, cols = _noisy_in_example_order(packed)
    gen = torch.Generator().manual_seed(3)
    x = packed.values.clone()
    x[rows, cols] = torch.randn(len(rows), LAYOUT.dmax, generator=gen, dtype=x.dtype) * packed.channel_mask[rows, cols]
    t = torch.zeros_like(packed.t)
    t[rows, cols] = torch.rand(len(rows), generator=gen, dtype=t.dtype)
    with torch.no_grad():
        guided = _teacher_velocity(teacher, packed, (rows, cols), ex, LAYOUT, g, row_length=row_length, unread_clean=False)(x, t)
        plain = _teacher_velocity(teacher, packed, (rows, cols), ex, LAYOUT, 1.0, row_length=row_length, unread_clean=False)(x, t)
        assert torch.equal(plain, teacher(x, t, packed.codec, packed.meta))
        got, start = guided[rows, cols], 0
        for e in ex:  # brute force: each example alone, with and without its conditions
            n = sum(s.latents.shape[0] for s in e if s.role == "target")
            velocities = []
            for variant in (e, [s for s in e if s.role != "cond"] or e):
                alone = pack([variant], LAYOUT, two_copies=True, unread_clean=False)
                r, c = _noisy_in_example_order(alone)
                xa, ta = alone.values.clone(), torch.zeros_like(alone.t)
                xa[r, c], ta[r, c] = x[rows, cols][start : start + n], t[rows, cols][start : start + n]
                velocities.append(teacher(xa, ta, alone.codec, alone.meta)[r, c])
            with_c, without = velocities
            want = without + g * (with_c - without)
            torch.testing.assert_close(got[start : start + n], want, rtol=1e-9, atol=1e-9)
            if not any(s.role == "cond" for s in e):
                torch.testing.assert_close(got[start : start + n], plain[rows, cols][start : start + n], rtol=1e-9, atol=1e-9)
            else:
                assert float((got[start : start + n] - plain[rows, cols][start : start + n]).abs().max()) > 1e-4
            start += n
        assert start == len(rows)


def test_teacher_guidance_needs_distillation(tmp_path):
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.train.experiment import train
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    config = Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml"
    with pytest.raises(ConfigError, match="teacher_guidance .*needs train.objective=distill"):
        train(load_config(config, ["--train.teacher_guidance=2.0", "--train.steps=2"]), tmp_path / "run", reg=reg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_distillation_refuses_a_missing_or_unfit_teacher(tmp_path):
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.train.experiment import train
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    config = Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml"
    jumps = ["--train.objective=distill", "--prior.step_conditioning=true", "--train.steps=2"]
    with pytest.raises(ConfigError, match="set train.teacher"):
        train(load_config(config, jumps), tmp_path / "a", reg=reg, progress=False)
    with pytest.raises(ConfigError, match="has no trained codec|not a run|config.yaml"):
        train(load_config(config, [*jumps, f"--train.teacher={tmp_path / 'nothing'}"]), tmp_path / "b", reg=reg, progress=False)


@pytest.mark.slow
def test_a_distilled_student_jumps_where_its_teacher_integrates(tmp_path):
    """Teacher: the toy ring's flow prior (800 steps). Student: 300 steps of distillation from it. From the same
    noise, the student's one-jump samples land within a small distance of the teacher's 16 Euler steps (measured
    0.046 at 500 student steps on the 2,000-step teacher, against 2.55 between unpaired samples). A second student
    with the teacher's guidance 2 folded in lands near the teacher's guided samples."""
    from latentbridge.pipeline import Pipeline
    from latentbridge.plugins import build_registries, make_plugin_manager
    from latentbridge.train.experiment import train
    from pathlib import Path

    reg = build_registries(make_plugin_manager(autoload=True))
    config = Path(__file__).parents[1] / "configs" / "toy_label_to_vector.yaml"
    train(load_config(config, ["--train.steps=800"]), tmp_path / "teacher", reg=reg, progress=False)
    train(load_config(config, ["--train.objective=distill", "--prior.step_conditioning=true", f"--train.teacher={tmp_path / 'teacher'}",
                               "--train.steps=300", "--train.warmup_steps=20", "--train.lr=1e-3"]),
          tmp_path / "student", reg=reg, progress=False)
    teacher, student = (Pipeline.from_pretrained(tmp_path / k, reg) for k in ("teacher", "student"))
    labels = [i % 8 for i in range(256)]
    many = torch.stack([torch.as_tensor(x).float() for x in teacher.generate({"label": labels}, target="point", steps=16, guidance=1.0, seed=5)])
    student.set_sampling(1, "shortcut")
    one = torch.stack([torch.as_tensor(x).float() for x in student.generate({"label": labels}, target="point", guidance=1.0, seed=5)])
    paired = float((many - one).norm(dim=-1).mean())
    unpaired = float((many - one[torch.randperm(256, generator=torch.Generator().manual_seed(0))]).norm(dim=-1).mean())
    assert paired < 0.1 * unpaired and paired < 0.25, (paired, unpaired)
    codec = load_file_keys(tmp_path / "student" / "codecs" / "point"), load_file_keys(tmp_path / "teacher" / "codecs" / "point")
    assert codec[0] == codec[1]  # the student kept the teacher's codec (its latents), bit for bit

    # guidance folded in (train.teacher_guidance 2): one jump at guidance 1 lands where the teacher goes with 16
    # guided Euler steps -- closer than the plain student's one jump with guidance 2 applied to it (which overshoots)
    train(load_config(config, ["--train.objective=distill", "--prior.step_conditioning=true", f"--train.teacher={tmp_path / 'teacher'}",
                               "--train.teacher_guidance=2.0", "--train.steps=300", "--train.warmup_steps=20", "--train.lr=1e-3"]),
          tmp_path / "folded", reg=reg, progress=False)
    folded = Pipeline.from_pretrained(tmp_path / "folded", reg).set_sampling(1, "shortcut")
    guided = torch.stack([torch.as_tensor(x).float() for x in teacher.generate({"label": labels}, target="point", steps=16, guidance=2.0, seed=5)])
    one_folded = torch.stack([torch.as_tensor(x).float() for x in folded.generate({"label": labels}, target="point", guidance=1.0, seed=5)])
    one_cfg = torch.stack([torch.as_tensor(x).float() for x in student.generate({"label": labels}, target="point", guidance=2.0, seed=5)])
    paired_folded = float((guided - one_folded).norm(dim=-1).mean())
    paired_cfg = float((guided - one_cfg).norm(dim=-1).mean())
    assert paired_folded < 0.25 and paired_folded < 0.5 * paired_cfg, (paired_folded, paired_cfg)
    with pytest.warns(UserWarning, match="guidance 2.0 folded in"):
        folded.generate({"label": labels[:2]}, target="point", guidance=2.0, seed=5)


def load_file_keys(directory):
    from safetensors.torch import load_file

    return {k: v.tolist() for k, v in load_file(str(directory / "model.safetensors")).items()}
