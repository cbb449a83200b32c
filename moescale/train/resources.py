"""Resource checks before any work: memory a run needs, memory the machine has, threads, budget.

:func:`estimate_memory` counts, per rank and before the model is built:

- parameters: ``count_params(spec).total`` fp32 master weights (exact: the model builds
  every counted parameter; FSDP2 shards them over the ranks);
- gradients: one fp32 tensor per parameter (DDP adds its reducer buckets, the same size);
- optimizer: AdamW's ``exp_avg`` and ``exp_avg_sq``, two fp32 tensors per parameter (its
  per-tensor ``step`` scalars, a few bytes each, are left out);
- activations at the micro-batch: the tensors autograd saves for the backward pass,
  counted per token from the model's forward (RMSNorm, RoPE, GQA attention with the
  flash-style SDPA kernel that saves no T×T matrix, SwiGLU, the router and the routed
  experts' gate/up activations), plus the logits, log-probabilities and their gradient
  (3·V per token). Within 5% of autograd's saved tensors (tested; transient buffers of
  the backward pass other than the logits' gradient are not counted); 2 bytes
  per element under bf16 autocast, else 4.

:func:`check_memory` compares that with :func:`available_memory` (``MemAvailable`` and the
cgroup limit on CPU, free device memory on CUDA) and refuses with the numbers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from moescale.errors import ConfigError, check_range
from moescale.spec.accounting import count_params
from moescale.spec.model_spec import ModelSpec

__all__ = [
    "MemoryEstimate",
    "estimate_memory",
    "activation_elements_per_token",
    "available_memory",
    "check_memory",
    "fitting_micro_batch_tokens",
    "RUNS_PER_GPU_ENV",
    "check_budget",
    "check_threads",
    "cpu_cores",
]

FP32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs to train (see the module docstring for what each term counts)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    ddp_buckets: int = 0

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.ddp_buckets

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}"
                          for k, v in dataclasses.asdict(self).items() if v)
        return f"{_gib(self.total)} ({parts})"


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def activation_elements_per_token(spec: ModelSpec) -> float:
    """Elements autograd saves per token of a micro-batch (forward of the training model).

    Per block: each RMSNorm saves its input, the normalised and the scaled output (3·d+1);
    attention saves the rotated q and k, v, the SDPA output and its log-sum-exp and the
    re-laid-out output (3·a + 2·kv + heads, a = heads·hd, kv = kv_heads·hd; RoPE's products
    with the constant cos/sin tables save nothing per token); a SwiGLU of width f saves
    gate/up, silu and product (4·f). An MoE layer saves router logits and probabilities
    (2·E), the k gates and token indices (int64: 3·k), the k routed gate/up rows
    (2·k·d_expert) and its shared SwiGLU. The head adds the final norm (3·d) and 3·V for
    logits, log-probabilities and their gradient. (MoE layers small enough for the grouped
    back-end's padded path, T·K·D·F ≤ 2²², save padded copies instead: at most a few MB
    per layer by that bound, not modelled.)
    """
    d, hd = spec.d_model, spec.head_dim
    a, kv = spec.n_heads * hd, spec.n_kv_heads * hd
    block = 2 * (3 * d + 1) + 3 * a + 2 * kv + spec.n_heads
    dense_ffn = 4 * spec.d_ffn if spec.d_ffn else 0
    moe_ffn = 0
    if spec.is_moe:
        k = spec.top_k
        moe_ffn = 2 * spec.n_experts + 3 * k + 2 * k * spec.d_expert
        moe_ffn += 4 * spec.n_shared_experts * spec.d_shared
    n_moe = spec.n_moe_layers
    n_dense = spec.n_layers - n_moe
    return (spec.n_layers * block + n_dense * dense_ffn + n_moe * moe_ffn
            + 3 * d + 3 * spec.vocab_size)


def estimate_memory(
    spec: ModelSpec,
    micro_batch_tokens: int,
    *,
    world_size: int = 1,
    fsdp: bool = False,
    bf16: bool = False,
) -> MemoryEstimate:
    """Bytes one rank needs to train ``spec`` at ``micro_batch_tokens`` tokens per micro-batch.

    >>> spec = ModelSpec(d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
    >>> est = estimate_memory(spec, 1024)
    >>> est.params == 4 * count_params(spec).total, est.optimizer == 2 * est.params
    (True, True)
    """
    check_range("micro_batch_tokens", micro_batch_tokens, low=1, integer=True)
    check_range("world_size", world_size, low=1, integer=True)
    n = count_params(spec).total
    shard = world_size if fsdp else 1
    params = -(-n * FP32 // shard)
    act = int(activation_elements_per_token(spec) * micro_batch_tokens * (2 if bf16 else FP32))
    buckets = params if (world_size > 1 and not fsdp) else 0
    return MemoryEstimate(params=params, grads=params, optimizer=2 * params,
                          activations=act, ddp_buckets=buckets)


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup-v2 memory limit, if it has one."""
    try:
        rel = Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def available_memory(device: str = "cpu") -> int | None:
    """Bytes available for a run on ``device``: free CUDA memory, or on CPU the kernel's
    ``MemAvailable`` capped by the cgroup limit; ``None`` if it cannot be read."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        free = None
    cg = _cgroup_free()
    if cg is not None:
        free = cg if free is None else min(free, cg)
    return free


def check_memory(
    estimate: MemoryEstimate,
    device: str,
    *,
    ranks_here: int = 1,
    available: int | None = None,
) -> None:
    """Refuse (:class:`ConfigError`, with the numbers) a run that needs more than the machine
    has. ``ranks_here`` ranks share the host's RAM on CPU; each GPU holds one rank."""
    have = available if available is not None else available_memory(device)
    if have is None:
        return
    need = estimate.total * (1 if device.startswith("cuda") else ranks_here)
    if need > have:
        where = "GPU memory free" if device.startswith("cuda") else "RAM available"
        per = f" × {ranks_here} ranks" if need != estimate.total else ""
        raise ConfigError(
            f"the run needs about {_gib(need)} of memory, {_gib(have)} {where}: "
            f"{estimate.describe()}{per}; use a smaller model or micro-batch, more ranks with "
            "--fsdp, or --ignore-memory-check to try anyway"
        )


RUNS_PER_GPU_ENV = "MOESCALE_RUNS_PER_GPU"
"""Runs sharing this process's GPU: a sweep's ``[resources] runs_per_gpu``, set by its
launcher; the trainer's GPU micro-batch then takes that share of half the free memory."""


def fitting_micro_batch_tokens(
    spec: ModelSpec,
    available: int,
    *,
    world_size: int = 1,
    fsdp: bool = False,
    bf16: bool = True,
    fraction: float = 0.5,
    floor: int = 16384,
) -> int:
    """Tokens per micro-batch whose :func:`estimate_memory` fits in ``fraction`` of
    ``available`` bytes (at least ``floor``): the GPU default, where a small model's step
    time is set by kernel launches, not by the tokens in a micro-batch.

    >>> spec = ModelSpec(d_model=192, n_layers=6, n_heads=6, vocab_size=257, d_ffn=512)
    >>> fitting_micro_batch_tokens(spec, 80 * 2**30) > 65536
    True
    >>> fitting_micro_batch_tokens(spec, 2**20)  # nothing fits: the floor
    16384
    """
    check_range("available", available, low=0)
    check_range("fraction", fraction, low=0, high=1, low_inclusive=False)
    static = estimate_memory(spec, 1, world_size=world_size, fsdp=fsdp, bf16=bf16)
    per_token = max(1, static.activations)
    room = fraction * available - (static.total - static.activations)
    return max(floor, int(room // per_token))


def check_budget(compute: float, batch_tokens: int, flops_per_token: float) -> None:
    """Refuse a compute budget below one optimizer step (``batch_tokens·M`` FLOPs)."""
    one_step = batch_tokens * flops_per_token
    if compute < one_step:
        raise ConfigError(
            f"'compute' must be at least one optimizer step of this model ({batch_tokens} "
            f"tokens × M {flops_per_token:.4g} = {one_step:.4g} FLOPs); got {compute:.4g}"
        )


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(threads: int) -> None:
    """Refuse more CPU threads per rank than this process has cores."""
    cores = cpu_cores()
    check_range("threads", threads, low=1, high=cores, integer=True)
