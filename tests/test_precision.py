"""train.mixed_precision: `auto` takes bf16 only where the hardware computes it natively; explicit bf16 on an emulating
CPU warns (an AVX2-only CPU ran the demo's codec stage 30x slower under bf16 autocast)."""

from __future__ import annotations

import pytest
import torch

from latentbridge.train import parallel


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch, native):
    caps = {"avx2": True, "avx512_bf16": native, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert parallel.native_bf16("cpu") is native
    assert parallel.resolve_precision("auto", "cpu") == ("bf16" if native else "no", None)
    assert parallel.resolve_precision("no", "cpu") == ("no", None)
    precision, why = parallel.resolve_precision("bf16", "cpu")
    assert precision == "bf16"  # an explicit choice is kept: correct, only slow
    if native:
        assert why is None
    else:
        assert "emulated" in why and "mixed_precision: auto" in why


def test_amx_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert parallel.resolve_precision("auto", "cpu") == ("bf16", None)


def test_this_machine_resolves_auto_from_its_own_capabilities():
    caps = torch.cpu.get_capabilities()
    want = "bf16" if (caps.get("avx512_bf16") or caps.get("amx_bf16")) else "no"
    assert parallel.resolve_precision("auto", "cpu")[0] == want
