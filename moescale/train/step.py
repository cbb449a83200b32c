"""One training step and one evaluation pass: the code every training path runs.

:func:`train_step` is what :func:`~moescale.train.train` runs at every optimizer step and
what ``moescale bench train`` times, so a benchmark measures the trainer, not a copy of
it: gradient accumulation over micro-batches (DDP all-reduce on the last one only),
forward under autocast when asked, loss + MoE auxiliary losses backward, global-norm
clip, the statistics all-reduce, the divergence guard, AdamW and the aux-loss-free
router-bias update ([LING2]).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from moescale.train import parallel

__all__ = ["TrainParts", "StepResult", "train_step", "eval_losses"]


@dataclass
class TrainParts:
    """The modules a step touches (built by :func:`~moescale.train.setup.build_training`)."""

    model: nn.Module
    """The plain module: state dict, router-bias updates, gradient clipping."""
    step_model: nn.Module
    """What a training forward calls (DDP/FSDP-wrapped, maybe compiled)."""
    eval_model: nn.Module
    """What an evaluation forward calls."""
    optimizer: torch.optim.Optimizer
    ctx: parallel.DistContext
    autocast_dtype: torch.dtype | None = None

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)


@dataclass(frozen=True)
class StepResult:
    """Statistics of one step, averaged over micro-batches and ranks."""

    loss: float
    """Mean cross-entropy (nats/token) of the step's batch, before the update."""
    aux_loss: float
    """Summed MoE auxiliary losses (balancing + z-loss, with their coefficients)."""
    grad_norm: float
    """Global gradient norm before clipping (0 when clipping is off)."""
    stats: dict[str, float]
    """Routing statistics (see :func:`scalar_stats`)."""
    diverged: str | None = None
    """Why the update was skipped (non-finite or above ``max_loss``); ``None`` if applied."""


def scalar_stats(stats: dict | None) -> dict[str, torch.Tensor]:
    """Scalar routing statistics of one forward pass (tensors kept on device, no sync).

    The model reports per MoE layer ``{layer: {"imbalance": max/mean load, "dropped_fraction",
    "load"}}``; the trainer logs ``max_load_ratio`` (worst layer's max/mean expert load),
    ``mean_load_ratio`` (mean over layers) and ``dropped_fraction`` (mean over layers).
    Flat scalar entries (``{name: value}``) are passed through.
    """
    out: dict[str, torch.Tensor] = {}
    per_layer: dict[str, list[torch.Tensor]] = {}
    for k, v in (stats or {}).items():
        if isinstance(v, dict):
            for name, value in v.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    per_layer.setdefault(name, []).append(value.detach().reshape(()).double())
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[str(k)] = v.detach().reshape(()).double()
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = torch.tensor(float(v), dtype=torch.float64)
    if "imbalance" in per_layer:
        ratios = torch.stack(per_layer.pop("imbalance"))
        out["max_load_ratio"] = ratios.max()
        out["mean_load_ratio"] = ratios.mean()
    for name, values in per_layer.items():
        out[name] = torch.stack(values).mean()
    return out


def train_step(
    parts: TrainParts,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    micro_batch_size: int,
    grad_clip: float = 1.0,
    max_loss: float = math.inf,
) -> StepResult:
    """One optimizer step on this rank's rows ``(x, y)`` of the global batch.

    ``x`` is cut into micro-batches of ``micro_batch_size`` rows (the last may hold fewer);
    each backward is scaled by 1/n_micro, or by its share of the rows when the micro-batches
    differ in size, so the gradient is that of the mean loss. The update is skipped (and
    ``diverged`` says why) when the loss, aux loss or gradient norm is not finite or the
    loss exceeds ``max_loss``.
    """
    ctx = parts.ctx
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    x = x.to(ctx.device, non_blocking=True)
    y = y.to(ctx.device, non_blocking=True)
    mb = micro_batch_size
    rows = x.shape[0]
    n_micro = max(1, -(-rows // mb))
    even = rows % mb == 0 or n_micro == 1
    keys: list[str] | None = None
    acc: torch.Tensor | None = None
    for i in range(n_micro):
        xs, ys = x[i * mb : (i + 1) * mb], y[i * mb : (i + 1) * mb]
        with parallel.no_sync(parts.step_model, i < n_micro - 1), parts.autocast():
            outp = parts.step_model(xs, ys)
            aux = outp.aux_loss if getattr(outp, "aux_loss", None) is not None else None
            total = outp.loss if aux is None else outp.loss + aux
        share = 1.0 if even else xs.shape[0] / rows
        (total / n_micro if even else total * share).backward()
        stats = scalar_stats(getattr(outp, "routing_stats", None))
        if keys is None:
            keys = sorted(stats)
        parts_ = [
            outp.loss.detach().double().reshape(()),
            (aux.detach().double().reshape(()) if aux is not None
             else torch.zeros((), dtype=torch.float64, device=ctx.device)),
        ] + [stats[k].to(ctx.device) if k in stats else
             torch.full((), math.nan, dtype=torch.float64, device=ctx.device)
             for k in keys]
        vec = torch.stack(parts_) if even else torch.stack(parts_) * share
        acc = vec if acc is None else acc + vec
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
    else:
        norm = torch.zeros(())
    mean = acc / n_micro if even else acc
    vec = torch.cat([mean, torch.ones(1, dtype=torch.float64, device=ctx.device)])
    vec = parallel.all_reduce_sum(vec.cpu(), ctx)
    vec = vec[:-1] / float(vec[-1])
    loss, aux_v, gnorm = float(vec[0]), float(vec[1]), float(norm)
    result = dict(loss=loss, aux_loss=aux_v, grad_norm=gnorm,
                  stats=dict(zip(keys or [], vec[2:].tolist(), strict=True)))
    if not (math.isfinite(loss) and math.isfinite(gnorm) and math.isfinite(aux_v)):
        parts.optimizer.zero_grad(set_to_none=True)
        return StepResult(**result, diverged=f"non-finite loss {loss} (grad norm {gnorm})")
    if loss > max_loss:
        parts.optimizer.zero_grad(set_to_none=True)
        return StepResult(**result, diverged=f"train loss {loss:.4g} above max_loss {max_loss:.4g}")
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    update = getattr(parts.model, "update_router_biases", None)
    if callable(update):
        update()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return StepResult(**result)


@torch.no_grad()
def eval_losses(parts: TrainParts, batches) -> list[float]:
    """Mean cross-entropy of each batch of ``batches`` (forward only, no grad), over all
    ranks: entry ``b`` is the mean over ranks of each rank's batch-``b`` mean (ranks hold
    equal shares of every batch). Every rank must pass the same number of batches."""
    model, ctx = parts.eval_model, parts.ctx
    model.eval()
    try:
        losses = []
        for x, y in batches:
            with parts.autocast():
                losses.append(model(x.to(ctx.device), y.to(ctx.device)).loss.double().reshape(()))
    finally:
        model.train()
    vec = torch.stack(losses).cpu() if losses else torch.zeros(0, dtype=torch.float64)
    vec = torch.cat([vec, torch.ones(1, dtype=torch.float64)])
    vec = parallel.all_reduce_sum(vec, ctx)
    return (vec[:-1] / vec[-1]).tolist()
