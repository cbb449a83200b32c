"""Assemble a run: runtime settings, data, model (compiled / wrapped), optimizer.

CPU settings are chosen for speed *and* reproducibility: a fixed thread count
(cores / local ranks; results of a GEMM depend on the thread split), and
``torch.use_deterministic_algorithms`` so a resumed run repeats an uninterrupted
one bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from moescale.allocator import retain_freed_memory
from moescale.errors import ConfigError, DataError
from moescale.spec.model_spec import ModelSpec
from moescale.train import parallel
from moescale.train.config import TrainConfig, TrainPlan
from moescale.train.resources import check_threads, cpu_cores
from moescale.train.step import TrainParts

__all__ = [
    "Runtime",
    "flush_denormal_enabled",
    "restored_torch_state",
    "runtime_settings",
    "open_training_data",
    "build_training_model",
    "build_optimizer",
    "build_training",
    "eval_block_windows",
]


@dataclass(frozen=True)
class Runtime:
    """How this process runs: threads, precision, compilation, determinism."""

    device: str
    threads: int
    autocast_dtype: torch.dtype | None
    compile: bool
    deterministic: bool
    fsdp: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["autocast_dtype"] = str(self.autocast_dtype).replace("torch.", "") if (
            self.autocast_dtype is not None
        ) else "float32"
        return d


SMALL_MICRO_STEP_FLOPS = 2e9
"""Below this many FLOPs per micro-step (Ling M × micro-batch tokens) one CPU thread is
faster than several: parallel regions of tiny GEMMs cost more than they save, and on a
loaded machine OpenMP barriers waiting on a descheduled thread cost 10× (measured)."""


def default_threads(plan: TrainPlan | None, ctx: parallel.DistContext) -> int:
    """CPU threads per rank: cores / local ranks, or 1 for tiny micro-steps."""
    if plan is not None:
        micro_flops = plan.flops_per_token * plan.micro_batch_size * plan.seq_len
        if micro_flops < SMALL_MICRO_STEP_FLOPS:
            return 1
    return max(1, cpu_cores() // max(1, ctx.local_world_size))


COMPILE_MIN_RUN_FLOPS = 1e13
"""On CPU, ``compile=None`` compiles dense models only for runs of at least this many FLOPs
(minutes of training): compiling takes ~20-60 s on 2 cores, and measured on the dense
benchmark model it raised MFU from ~0.42 to ~0.62 (fusing RMSNorm, RoPE, SwiGLU and
residual element-wise chains). MoE models are not compiled on CPU: the expert-parallel
dispatch breaks the graph and no gain was measurable."""


def _auto_compile(cuda: bool, moe: bool, plan: TrainPlan | None) -> bool:
    if cuda:
        return True
    if moe:
        return False
    if plan is None:  # benchmarks: steady-state throughput
        return True
    micro_flops = plan.flops_per_token * plan.micro_batch_size * plan.seq_len
    return plan.flops >= COMPILE_MIN_RUN_FLOPS and micro_flops >= SMALL_MICRO_STEP_FLOPS


@contextlib.contextmanager
def restored_torch_state() -> Iterator[None]:
    """Give the caller back the process-global torch settings a run changes: thread count,
    deterministic algorithms and denormal flushing (which numpy shares). Also a decorator."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), flush_denormal_enabled())
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.set_flush_denormal(saved[3])


def flush_denormal_enabled() -> bool:
    """Whether this thread flushes subnormal floats to zero (torch has no getter).

    :func:`runtime_settings` turns flushing on for CPU runs; the state is process-global and
    also changes numpy's arithmetic, so :func:`~moescale.train.trainer.train` restores it.
    """
    tiny = torch.tensor([1e-310], dtype=torch.float64)  # subnormal in float64
    return bool((tiny * 1.0).item() == 0.0)


def runtime_settings(
    config: TrainConfig,
    ctx: parallel.DistContext,
    plan: TrainPlan | None = None,
    *,
    moe: bool = False,
) -> Runtime:
    """Apply thread count and determinism for this process; return the settings used.

    ``plan`` (``None`` for benchmarks) and ``moe`` feed the automatic thread count and
    ``torch.compile`` choice when the config leaves them unset.
    """
    cuda = ctx.device.type == "cuda"
    if config.threads is not None:
        check_threads(config.threads)  # more threads than cores: slower, and 1e5 segfaults
    threads = config.threads or default_threads(plan, ctx)
    torch.set_num_threads(threads)
    if not cuda:
        retain_freed_memory()  # per-step tensors reuse heap pages (moescale.allocator)
        # denormal gradients/moments (tiny init std 0.006, Adam's v) cost ~100x per FLOP on
        # x86; flushing them to zero is deterministic and changes nothing measurable.
        torch.set_flush_denormal(True)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if cuda else "float32"
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    deterministic = config.deterministic if config.deterministic is not None else not cuda
    if deterministic:
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    compile_ = config.compile if config.compile is not None else _auto_compile(cuda, moe, plan)
    if config.fsdp and not cuda:
        raise ConfigError(f"'fsdp' needs CUDA devices; got device {str(ctx.device)!r} "
                          "(without --fsdp, CPU runs use DDP)")
    return Runtime(str(ctx.device), threads, autocast, bool(compile_), deterministic, config.fsdp)


def _tokenizer_name(spec: ModelSpec, config: TrainConfig) -> str:
    return f"bpe:{spec.vocab_size}" if config.tokenizer == "bpe" else config.tokenizer


def open_training_data(spec: ModelSpec, config: TrainConfig, plan: TrainPlan, ctx):
    """Open the token cache (rank 0 builds it first), check it covers the run.

    Returns the dataset, this rank's fixed periodic-evaluation batches (a subset of the
    final evaluation's sample, spread over it) and that sample
    (:meth:`~moescale.data.TokenDataset.eval_sample`: ``eval_tokens`` drawn by document, in
    whole blocks of :func:`eval_block_windows`). Raises
    :class:`DataError` if the corpus is too small for ``plan.tokens`` within
    ``config.epochs`` (the message suggests ``--epochs``) and :class:`ConfigError`
    if the tokenizer's vocabulary does not fit the spec's ``vocab_size``.
    """
    from moescale.data import open_dataset

    def _open():
        return open_dataset(
            config.corpus,
            _tokenizer_name(spec, config),
            val_fraction=config.val_fraction,
            val_min_docs=config.val_min_docs,
            cache_dir=config.cache_dir,
            text_field=config.text_column,
        )

    ds, err = None, None
    if ctx.is_main:
        try:
            ds = _open()
        except Exception as exc:  # re-raised on every rank below, so no rank hangs
            err = exc
    parallel.barrier(ctx)
    failed = parallel.broadcast_object(None if err is None else f"{type(err).__name__}", ctx)
    if err is not None:
        raise err
    if failed is not None:
        raise DataError(f"rank 0 could not open the corpus ({failed})")
    if ds is None:
        ds = _open()
    if ds.vocab_size > spec.vocab_size:
        raise ConfigError(
            f"'vocab_size' of the spec must be >= the tokenizer's {ds.vocab_size} "
            f"({ds.tokenizer_id}); got {spec.vocab_size}"
        )
    ds.require_tokens(plan.tokens, plan.seq_len, epochs=config.epochs)
    block = eval_block_windows(config, ctx.world_size)
    sample = ds.eval_sample(plan.seq_len, config.eval_tokens, multiple_of=block)
    val_batch = plan.micro_batch_size * ctx.world_size
    n_batches = min(config.eval_batches, len(sample.windows) // val_batch)
    if n_batches < 1:
        raise DataError(
            f"validation sample too small: {len(sample.windows)} windows of seq_len "
            f"{plan.seq_len}, one evaluation batch needs {val_batch}; raise --eval-tokens "
            "or --val-fraction, or lower the batch"
        )
    val = ds.val_batches(n_batches, val_batch, plan.seq_len, rank=ctx.rank,
                         world_size=ctx.world_size, within=sample)
    return ds, val, sample


def eval_block_windows(config: TrainConfig, world_size: int) -> int:
    """Windows per final-evaluation block: ``eval_block_tokens`` in whole sequences (at
    least one), rounded up to a multiple of the ranks (each evaluates an equal share)."""
    n = max(1, config.eval_block_tokens // config.seq_len)
    return -(-n // world_size) * world_size


def build_training_model(spec: ModelSpec, config: TrainConfig, ctx, runtime: Runtime):
    """Build the model (seeded), wrap it for DDP/FSDP2 and compile it if asked.

    Returns ``(model, step_model, eval_model)``: the plain module (state dict,
    router-bias updates), the module a training step calls, and the one evaluation calls.
    """
    from moescale.model import build_model

    torch.manual_seed(config.seed)
    moe = config.moe if spec.is_moe else None
    model = build_model(spec, moe, init_std=config.init_std, device=ctx.device)
    model.train()
    wrapped = parallel.wrap_model(model, ctx, fsdp=runtime.fsdp)
    step_model = torch.compile(wrapped) if runtime.compile else wrapped
    eval_model = wrapped if runtime.fsdp else model
    return model, step_model, eval_model


def build_optimizer(model: nn.Module, config: TrainConfig, ctx) -> torch.optim.Optimizer:
    """AdamW (β1, β2, weight decay on tensors with >= 2 dims) — [EL] recipe.

    ``fused`` kernels on CUDA; the multi-tensor ``foreach`` path on CPU.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kw = {"fused": True} if ctx.device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=0.0, betas=(config.beta1, config.beta2), **kw)


def build_training(spec: ModelSpec, config: TrainConfig, ctx, runtime: Runtime) -> TrainParts:
    """Model (seeded, wrapped, maybe compiled) and optimizer: what :func:`train_step` needs."""
    model, step_model, eval_model = build_training_model(spec, config, ctx, runtime)
    return TrainParts(
        model=model, step_model=step_model, eval_model=eval_model,
        optimizer=build_optimizer(model, config, ctx), ctx=ctx,
        autocast_dtype=runtime.autocast_dtype,
    )
