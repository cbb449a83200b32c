"""Process groups and model wrapping: one process, DDP, or FSDP2 — kept apart from the model.

The model is written for one device (torchtitan style); this module decides how
to replicate or shard it. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) :func:`init_distributed` joins the group: gloo on CPU, nccl on
CUDA. Each rank takes its shard of the global batch from the data package's
rank sharding; gradients are averaged by DDP (or reduce-scattered by FSDP2).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from moescale.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "wrap_model", "all_reduce_sum", "all_reduce_min",
           "no_sync"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, number of ranks, its device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    initialized_here: bool
    """Whether :func:`init_distributed` created the process group (and should destroy it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"'device' is {device!r} but CUDA is not available")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(device)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one; return this process's place.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (set by
    ``torchrun``). Without them, a single process on ``device``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = _resolve_device(device, local_rank)
    created = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        created = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistContext(rank, world, local_rank, local_world, dev, created)


def wrap_model(model: nn.Module, ctx: DistContext, *, fsdp: bool = False) -> nn.Module:
    """Replicate (DDP) or shard (FSDP2 ``fully_shard``, CUDA only) ``model`` across ranks.

    A single process gets the model back unchanged. FSDP2 shards each transformer
    block, then the root, and keeps fp32 master weights (bf16 compute comes from
    autocast in the trainer).
    """
    if not ctx.distributed:
        return model
    if fsdp:
        if ctx.device.type != "cuda":
            raise ConfigError("'fsdp' needs CUDA devices; use DDP (the default) on CPU")
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(model, "blocks", getattr(model, "layers", None))
        if blocks is not None:
            for block in blocks:
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Unused parameters: an MoE expert may receive no token in a micro-batch; its gradient
    # is then zero in our 3-D expert weights, so the graph is the same on every step.
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def no_sync(model: nn.Module, active: bool):
    """DDP's ``no_sync`` while accumulating gradients (all-reduce only on the last micro-batch)."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a float64 tensor over ranks (identity in one process)."""
    return _all_reduce(values, ctx, "SUM")


def all_reduce_min(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise minimum over ranks (identity in one process)."""
    return _all_reduce(values, ctx, "MIN")


def _all_reduce(values: torch.Tensor, ctx: DistContext, op: str) -> torch.Tensor:
    if ctx.distributed:
        on = values.device
        # nccl reduces device tensors only; gloo reduces CPU tensors
        values = values.to(ctx.device if ctx.device.type == "cuda" else "cpu", copy=True)
        dist.all_reduce(values, op=getattr(dist.ReduceOp, op))
        values = values.to(on)
    return values


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def model_state(model: nn.Module, fsdp: bool) -> dict:
    """Full (unsharded, CPU) model state dict; collective under FSDP2."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts)
    return model.state_dict()


def optimizer_state(model: nn.Module, optimizer, fsdp: bool) -> dict:
    """Full optimizer state dict; collective under FSDP2."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=opts)
    return optimizer.state_dict()


def load_state(model: nn.Module, optimizer, model_sd: dict, optim_sd: dict, fsdp: bool) -> None:
    """Load full state dicts into a (possibly FSDP2-sharded) model and its optimizer."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_state_dict(model, optimizer, model_state_dict=model_sd,
                       optim_state_dict=optim_sd, options=opts)
        return
    model.load_state_dict(model_sd)
    optimizer.load_state_dict(optim_sd)
