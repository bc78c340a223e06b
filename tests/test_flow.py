"""Flow matching on tiny float64 tensors: path identities, solver orders, time grids, guidance, samplers."""

from __future__ import annotations

import math

import pytest
import torch

from latentbridge.flow import (LogitNormal, Uniform, default_logit_normal_loc, flow_matching_loss, guided_velocity,
                               integrate, interpolate, make_time_sampler, time_grid, velocity_target)


def test_path_endpoints_and_velocity():
    z0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(interpolate(z0, eps, torch.zeros(3, dtype=torch.float64)), z0)
    assert torch.equal(interpolate(z0, eps, torch.ones(3, dtype=torch.float64)), eps)
    h = 1e-6
    t = torch.full((3,), 0.3, dtype=torch.float64)
    finite_diff = (interpolate(z0, eps, t + h) - interpolate(z0, eps, t)) / h
    assert torch.allclose(finite_diff, velocity_target(z0, eps), atol=1e-6)


def test_exact_velocity_is_integrated_exactly_along_the_straight_path():
    z0, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    for solver in ("euler", "heun", "midpoint"):
        out = integrate(lambda x, t: eps - z0, eps, steps=3, solver=solver)
        assert torch.allclose(out, z0, atol=1e-12)


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_solvers_converge_at_their_order(solver, order):
    # dx/dt = x * cos(t) has x(t) = x(1) * exp(sin t - sin 1); integrate from t = 1 to 0.
    x1 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    exact = x1 * math.exp(math.sin(0.0) - math.sin(1.0))
    errors = [float((integrate(lambda x, t: x * torch.cos(t), x1, steps=n, solver=solver) - exact).abs().max()) for n in (16, 32, 64)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.15 for r in rates), rates


def test_time_grid_and_shift():
    grid = time_grid(4)
    assert torch.allclose(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and torch.all(shifted[1:-1] > grid[1:-1])  # more steps near noise
    with pytest.raises(ValueError):
        time_grid(0)
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, torch.zeros(1), solver="rk4")


def test_guidance_combination():
    v_full, v_a, v_b = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0])
    assert torch.equal(guided_velocity(v_full, [v_a], [1.0], 0.5), v_full)
    assert torch.equal(guided_velocity(v_full, [v_a], [3.0], 0.5), torch.tensor([3.0]))  # v_a + 3 (v_full - v_a)
    assert torch.equal(guided_velocity(v_full, [v_a, v_b], [2.0, 2.0], 0.5), torch.tensor([0.0]))  # 1 + 1 - 2
    assert torch.equal(guided_velocity(v_full, [v_a], [3.0], 0.9, interval=(0.0, 0.5)), v_full)
    with pytest.raises(ValueError, match="one guidance scale per condition"):
        guided_velocity(v_full, [v_a], [1.0, 2.0], 0.5)


def test_masked_loss_ignores_other_tokens_and_channels():
    pred, target = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    target[0, 0] = 100.0
    mask = torch.tensor([[False, True, True]])
    channels = torch.tensor([[[True, True], [True, False], [True, True]]])
    assert float(flow_matching_loss(pred, target, mask, channels)) == 1.0


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    t = LogitNormal(1.0, 1.0).sample(20000, g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(torch.logit(t).mean()) - 1.0) < 0.03
    u = Uniform().sample(20000, g)
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert default_logit_normal_loc(16) == pytest.approx(1.0) and default_logit_normal_loc(128) == pytest.approx(2.3)
    assert 1.6 < default_logit_normal_loc(64) < 2.0
    assert isinstance(make_time_sampler("uniform", None, 1.0, 16), Uniform)
    assert make_time_sampler("logit_normal", None, 1.0, 16).loc == pytest.approx(1.0)
