"""``moescale bench train``: training throughput against the GEMM peak of the same process.

Each round times a GEMM-peak window (:func:`~moescale.train.throughput.gemm_peak_flops`)
and then a few full training steps (forward, backward, clip, statistics, AdamW):
:func:`~moescale.train.step.train_step`, the function :func:`~moescale.train.train`
runs at every step; the round's MFU is
``M · tokens/s / peak`` with M Ling's FLOPs per token ([EL] arXiv 2507.17702,
App. C: non-embedding, attention scores at full s — a causal kernel does about
half of that term, so MFU is stated in Ling's convention). The reported figures
are medians over rounds, which keeps the ratio honest on a machine shared with
other work: numerator and denominator are measured seconds apart.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from moescale.spec.accounting import flops_per_token
from moescale.spec.model_spec import ModelSpec
from moescale.train import parallel
from moescale.train.config import TrainConfig
from moescale.train.setup import build_training, restored_torch_state, runtime_settings
from moescale.train.step import train_step
from moescale.train.throughput import gemm_peak_rates

__all__ = ["bench_spec", "bench_train"]


def bench_spec(moe: bool = False) -> ModelSpec:
    """The default benchmark model: d_model 256, 4 layers, 4 heads, byte vocabulary.

    Dense: SwiGLU d_ffn 1024. MoE (``moe=True``): 64 routed experts of width 128, top-8,
    no shared expert — the same active FFN width (8·128 = 1024), G = 2d/d_expert = 4.
    """
    common = dict(d_model=256, n_layers=4, n_heads=4, vocab_size=257)
    if moe:
        return ModelSpec(name="bench-moe", **common, n_experts=64, top_k=8, d_expert=128)
    return ModelSpec(name="bench-dense", **common, d_ffn=1024)


@restored_torch_state()
def bench_train(
    spec: ModelSpec | None = None,
    *,
    moe: bool = False,
    steps: int = 12,
    rounds: int = 4,
    seq_len: int = 256,
    micro_batch_size: int = 32,
    device: str = "auto",
    compile: bool | None = None,
    threads: int | None = None,
    warmup_steps: int = 2,
) -> dict[str, Any]:
    """Measure training throughput and MFU of ``spec`` (default :func:`bench_spec`).

    Parameters
    ----------
    steps : int
        Timed optimizer steps in all (split over ``rounds``), after ``warmup_steps``.
    micro_batch_size, seq_len : int
        Sequences × tokens of each step (one micro-batch per step: the GEMM shapes
        of a training micro-step).

    Returns
    -------
    dict
        ``tokens_per_s``, ``model_flops_per_s`` (Ling M × tokens/s), ``peak_flops_per_s``,
        ``mfu`` (median over rounds of the per-round ratio), ``mfu_cpu_time`` (the same with
        process CPU seconds instead of wall seconds on both sides: robust to other processes
        taking cores; CPU only), ``flops_per_token``,
        ``flops_convention`` ("ling"), ``peak_dtype``, ``threads``, ``compile``, ``spec``,
        ``steps``, ``rounds``, ``seq_len``, ``micro_batch_size``, ``device``, ``per_round``.
    """
    spec = spec if spec is not None else bench_spec(moe)
    config = TrainConfig(
        compute=1.0, seq_len=seq_len, micro_batch_size=micro_batch_size, device=device,
        compile=compile, threads=threads, deterministic=False,
    )
    ctx = parallel.init_distributed(device)
    runtime = runtime_settings(config, ctx, moe=spec.is_moe)
    parts = build_training(spec, config, ctx, runtime)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, min(spec.vocab_size, 256), (micro_batch_size, seq_len + 1), generator=gen)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def run_steps(n: int) -> None:
        for _ in range(n):
            train_step(parts, x, y, lr=1e-4, micro_batch_size=micro_batch_size,
                       grad_clip=config.grad_clip)

    t0 = time.perf_counter()
    run_steps(warmup_steps)
    warmup_s = time.perf_counter() - t0
    m = flops_per_token(spec, convention="ling", seq_len=seq_len)
    per_round = _timed_rounds(parts.ctx.device, run_steps, steps, rounds,
                              tokens_per_step=micro_batch_size * seq_len, flops_per_token=m)
    parallel.shutdown(ctx)
    tps = statistics.median(p["tokens_per_s"] for p in per_round)
    return {
        "tokens_per_s": tps,
        "model_flops_per_s": m * tps,
        "peak_flops_per_s": statistics.median(p["peak_flops_per_s"] for p in per_round),
        "mfu": statistics.median(p["mfu"] for p in per_round),
        "mfu_cpu_time": (statistics.median(p["mfu_cpu_time"] for p in per_round)
                         if per_round[0]["mfu_cpu_time"] is not None else None),
        "flops_per_token": m,
        "flops_convention": "ling",
        "peak_dtype": str(torch.bfloat16 if ctx.device.type == "cuda" else torch.float32),
        "device": str(ctx.device),
        "threads": runtime.threads,
        "compile": runtime.compile,
        "autocast_dtype": runtime.to_dict()["autocast_dtype"],
        "seq_len": seq_len,
        "micro_batch_size": micro_batch_size,
        "steps": steps,
        "rounds": len(per_round),
        "warmup_s": warmup_s,
        "arch": "moe" if spec.is_moe else "dense",
        "spec": spec.to_dict(),
        "per_round": per_round,
    }


def _timed_rounds(
    device: torch.device, run_steps, steps: int, rounds: int, *,
    tokens_per_step: int, flops_per_token: float,
) -> list[dict[str, Any]]:
    """Time ``steps`` training steps in ``rounds`` windows, each bracketed by GEMM-peak
    windows; a round's MFU uses the mean of the two peaks around it, so load that changes
    during the benchmark hits numerator and denominator alike."""
    per_round = []
    rounds = max(1, min(rounds, steps))
    base, extra = divmod(steps, rounds)
    peak_before = gemm_peak_rates(device, seconds=0.3, repeats=2)
    for r in range(rounds):
        n = base + (1 if r < extra else 0)
        t, c = time.perf_counter(), time.process_time()
        run_steps(n)  # train_step synchronises (statistics all-reduce on the host)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        peak_after = gemm_peak_rates(device, seconds=0.3, repeats=2)
        peak = 0.5 * (peak_before[0] + peak_after[0])
        peak_cpu = 0.5 * (peak_before[1] + peak_after[1])
        tps = n * tokens_per_step / dt
        per_round.append({
            "tokens_per_s": tps, "peak_flops_per_s": peak, "mfu": flops_per_token * tps / peak,
            "mfu_cpu_time": (flops_per_token * n * tokens_per_step / cpu / peak_cpu
                             if peak_cpu else None),
            "cpu_s": cpu, "wall_s": dt,
        })
        peak_before = peak_after
    return per_round
