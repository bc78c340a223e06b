"""train.mixed_precision: `auto` takes bf16 only where it pays -- computed natively, and on a CPU measured faster than
fp32 (an AVX2-only CPU ran the demo's codec stage 30x slower under bf16 autocast; an Intel Xeon with AVX512-BF16 but no
AMX ran every stage of the demo slower in bf16 than in fp32). Explicit bf16 on an emulating CPU warns. What runs in
fp32 where bf16 is slow on a CPU: Muon's Newton-Schulz iteration of a run that computes in fp32, and the attention of
one that computes in bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentbridge.train import parallel


@pytest.mark.parametrize("native, ratio, want", [(False, 0.5, "no"), (True, 0.5, "bf16"), (True, 1.4, "no"),
                                                 (True, parallel.BF16_PAYS_BELOW + 0.01, "no")])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16_that_measures_faster(monkeypatch, native, ratio, want):
    caps = {"avx2": True, "avx512_bf16": native, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(parallel, "cpu_bf16_ratio", lambda: ratio)
    assert parallel.native_bf16("cpu") is native
    assert parallel.resolve_precision("auto", "cpu") == (want, None)
    assert parallel.resolve_precision("no", "cpu") == ("no", None)
    precision, why = parallel.resolve_precision("bf16", "cpu")
    assert precision == "bf16"  # an explicit choice is kept: correct, only slow
    if native:
        assert why is None
    else:
        assert "emulated" in why and "mixed_precision: auto" in why


def test_an_emulating_cpu_is_never_timed(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})

    def timed():
        raise AssertionError("bf16 products timed on a CPU that emulates bf16")

    monkeypatch.setattr(parallel, "cpu_bf16_ratio", timed)
    assert parallel.resolve_precision("auto", "cpu") == ("no", None)


def test_amx_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    monkeypatch.setattr(parallel, "cpu_bf16_ratio", lambda: 0.6)
    assert parallel.resolve_precision("auto", "cpu") == ("bf16", None)


def test_this_machine_resolves_auto_from_its_own_capabilities_and_timing():
    caps = torch.cpu.get_capabilities()
    native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    want = "bf16" if native and parallel.cpu_bf16_ratio() < parallel.BF16_PAYS_BELOW else "no"
    assert parallel.resolve_precision("auto", "cpu")[0] == want


def test_the_bf16_timing_is_measured_once_per_process():
    parallel.cpu_bf16_ratio.cache_clear()
    first = parallel.cpu_bf16_ratio()
    assert math.isfinite(first) and first > 0
    assert parallel.cpu_bf16_ratio() == first  # cached: every stage of a run resolves `auto` the same way
    assert parallel.cpu_bf16_ratio.cache_info().hits >= 1


def test_cpu_attention_of_bf16_inputs_is_computed_in_fp32_even_under_autocast():
    """The prior's masked attention on a CPU: bf16 q, k, v give bf16 out, equal to attending the same values in fp32
    (not to torch's bf16 kernel, whose backward took 5x as long), with gradients to all three."""
    from latentbridge.prior.layers import masked_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    mask = (torch.rand(2, 1, 16, 16, generator=gen) > 0.4) | torch.eye(16, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_attention(q, k, v, mask)
    fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    bf16 = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fp32)
    assert not torch.equal(out, bf16)  # the values differ, so the test tells the two apart
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
