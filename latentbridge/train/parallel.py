"""FSDP2 sharding, sharded checkpoints and compilation for the trainer (train.parallel, train.compile).

Under `train.parallel: fsdp` the trained modules are sharded with torch's FSDP2 (`fully_shard`): each block of
the prior (its `blocks`, when the backbone has them) is one unit and the rest of the prior another; a trained
codec is one unit whose parameters stay gathered between its calls (the trainer calls its `loss` and
`raw_encode`, not only `forward`). Parameters, gradients and optimizer state then live as DTensor shards, one per
process; the EMA copy is sharded the same way, so its update is a local lerp of shards.

Checkpoints of such a run are sharded too: every process writes its shards with torch.distributed.checkpoint
(DCP) into `sharded/` of the checkpoint directory, keyed by parameter name, so a run may resume with another
process count (DCP reshards on load). Beside it, the first process writes the usual full `model.safetensors` /
`ema.safetensors`, which sampling and evaluation read.

With one process there is nothing to shard: the modules stay plain and the checkpoints are still sharded-format
(one shard), so a run moves between one and several processes either way.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch import distributed as dist

# methods of a codec the trainer calls directly; under FSDP they gather the codec's parameters as forward does
CODEC_METHODS = ("loss", "raw_encode")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (an AVX2-only CPU) bf16 is emulated and a bf16 matmul costs tens of times an fp32 one."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return True  # other accelerators: trust the setting


# bf16 must be clearly faster to be taken. Measured: an Intel Xeon without AMX 1.38-1.78 (fp32 faster at every
# stage there); on an AMD EPYC the image VAE's whole step took 0.56x in bf16 (the ratio itself not timed there)
BF16_PAYS_BELOW = 0.85


def _products_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    """Seconds for the products a training step is made of, forward and backward: a linear layer the size of the demo
    prior's MLP over 4,096 tokens and a 3x3 convolution the size of the image VAE's, in `dtype` on the CPU."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 192, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(768, 192, generator=gen).to(dtype).requires_grad_()
    gy = torch.randn(4096, 768, generator=gen).to(dtype)
    img = torch.randn(16, 64, 32, 32, generator=gen).to(dtype).requires_grad_()
    kernel = torch.randn(64, 64, 3, 3, generator=gen).to(dtype).requires_grad_()
    gimg = torch.randn(16, 64, 32, 32, generator=gen).to(dtype)

    def once() -> None:
        F.linear(x, w).backward(gy)
        F.conv2d(img, kernel, padding=1).backward(gimg)

    once()  # first-call set-up (oneDNN primitives) is not timed
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def cpu_bf16_ratio() -> float:
    """bf16 over fp32 seconds of a step's products on this CPU, measured once per process (about a second). CPUs with
    native bf16 differ: on an AMD EPYC with AVX512-BF16 the demo's image VAE stepped 1.8x faster in bf16, on an Intel
    Xeon with AVX512-BF16 and no AMX 1.4x slower (docs/results.md, "bf16 where it pays")."""
    return _products_seconds(torch.bfloat16) / _products_seconds(torch.float32)


def bf16_pays(device: torch.device | str) -> bool:
    """Whether autocasting to bf16 speeds training up on `device`: a GPU with bf16, or a CPU with native bf16 whose bf16
    products measure clearly faster than fp32 here (cpu_bf16_ratio below BF16_PAYS_BELOW)."""
    device = torch.device(device)
    if not native_bf16(device):
        return False
    return device.type != "cpu" or cpu_bf16_ratio() < BF16_PAYS_BELOW


def resolve_precision(setting: str, device: torch.device | str) -> tuple[str, str | None]:
    """train.mixed_precision -> ("no" | "bf16", a warning or None). `auto`: bf16 where it pays (bf16_pays: natively
    computed, and on a CPU measured faster), else fp32. An explicit `bf16` is kept, with a warning where it is emulated
    (the run is correct, only slow)."""
    if setting == "no":
        return "no", None
    if setting == "auto":
        return ("bf16" if bf16_pays(device) else "no"), None
    if setting == "bf16" and not native_bf16(device):
        return "bf16", (f"train.mixed_precision=bf16 on a {torch.device(device).type} without native bf16 (no AVX512-BF16 or AMX "
                        "here): bf16 is emulated and a step can take tens of times longer than in fp32. Set "
                        "train.mixed_precision: auto (bf16 only where it pays) or no.")
    return setting, None


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_units(prior: nn.Module) -> list[nn.Module]:
    """The prior's FSDP units below its root: the entries of its `blocks` ModuleList, if it has one."""
    blocks = getattr(prior, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def fsdp_shard(trainable: nn.ModuleDict, device: torch.device, mixed_precision: str) -> list[nn.Module]:
    """Shard `trainable` (its `prior` and/or `codec`) over the process group in place; return the FSDP roots."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision == "bf16" \
        else MixedPrecisionPolicy()
    roots = []
    if "prior" in trainable:
        prior = trainable["prior"]
        for unit in shard_units(prior):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(prior, mesh=mesh, mp_policy=policy)
        roots.append(prior)
    if "codec" in trainable:
        codec = trainable["codec"]
        # one unit, kept gathered after each call: its methods call one another (loss -> raw_encode)
        fully_shard(codec, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
        for name in CODEC_METHODS:
            if callable(getattr(codec, name, None)):
                register_fsdp_forward_method(codec, name)
        roots.append(codec)
    return roots


def set_gradient_sync(roots: Iterable[nn.Module], sync: bool) -> None:
    """FSDP2's no_sync: skip the reduce-scatter on micro-steps that accumulate."""
    for root in roots:
        root.set_requires_gradient_sync(sync)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip gradients to a total norm; sharded (DTensor) gradients give the norm over all shards."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def full_tensors(state: dict[str, Any]) -> dict[str, Tensor]:
    """A state dict with every sharded tensor gathered (collective: every process calls it, in the same order)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach() for k, v in state.items() if isinstance(v, Tensor)}


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """The module's whole state dict on every process (gathered from the shards under FSDP)."""
    return full_tensors(module.state_dict())


def training_state(trainable: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> dict[str, Any]:
    """What a sharded checkpoint holds, keyed by parameter name (as DCP saves and reshards it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(trainable), "optim": get_optimizer_state_dict(trainable, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_sharded(directory: Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> None:
    """Every process writes its shards of weights, optimizer state and EMA into `directory` (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(training_state(trainable, optimizer, ema), storage_writer=dcp.FileSystemWriter(str(directory)))


def load_sharded(directory: Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> None:
    """Load a sharded checkpoint written by any number of processes into this run's layout (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = training_state(trainable, optimizer, ema)
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(directory)))
    set_model_state_dict(trainable, state["model"])
    set_optimizer_state_dict(trainable, optimizer, state["optim"])
    if ema is not None:
        ema.load_state_dict(state["ema"], strict=True)


def load_full(weights: dict[str, Tensor], optimizer_state: dict[str, Any], trainable: nn.Module,
              optimizer: torch.optim.Optimizer, ema: nn.Module | None, ema_state: dict[str, Tensor] | None) -> None:
    """Load a full-format checkpoint (written by a ddp run) into sharded modules: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(trainable, weights, options=full)
    names = [n for n, _ in trainable.named_parameters()]  # the optimizer's parameter order (it was built from these)
    by_name = {
        "state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(trainable, optimizer, by_name, options=full)
    if ema is not None and ema_state is not None:
        mine = ema.state_dict()
        shards = {k: distribute_tensor(ema_state[k].to(v.device_mesh.device_type), v.device_mesh, v.placements)
                  if isinstance(v, DTensor) else ema_state[k] for k, v in mine.items()}
        ema.load_state_dict(shards, strict=True)


def compile_prior(prior: nn.Module, sharded: bool) -> None:
    """torch.compile the prior in place (its state dict keeps its keys). Under FSDP each block is compiled on its own
    (the sharding hooks sit between blocks), otherwise the whole forward."""
    units = shard_units(prior) if sharded else []
    for unit in units or [prior]:
        unit.compile()
