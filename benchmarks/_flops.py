"""FLOP counting for the benchmarks: torch's FlopCounterMode, taught the CPU attention kernel.

FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel SDPA uses here, which it would count
as free. Importing this module gives the CPU kernel the same (dense) formula as the CUDA ones.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["FlopCounterMode", "counted"]

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _cpu_flash.default not in flop_registry:

    @register_flop_formula(_cpu_flash)
    def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def counted(fn: Callable[[], Any]) -> tuple[Any, int]:
    """fn()'s result and the FLOPs it ran (matrix products and attention; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()
