"""Speed of the MoE layer against a dense SwiGLU FFN of equal active FLOPs.

The dense reference has width ``(top_k + shared)·d_expert``, so its FFN FLOPs equal the
MoE layer's active expert FLOPs (router excluded, as in Ling's M, LAWS.md §2): a ratio
of 1 means routing and dispatch are free. Forward + backward (of ``sum(y) + aux_loss``
for the MoE) are timed in the same process, interleaved (dense, MoE, loop, dense, ...)
so that a machine shared with other work slows every variant alike; the median of
``repeats`` timed rounds after one warm-up round is reported. On CPU glibc keeps freed
memory (:func:`moescale.allocator.retain_freed_memory`, as in training): otherwise whether
a variant's large buffers are fresh ``mmap`` pages depends on what the process freed
before, which moved the dense reference by 10-20% between processes.

``hf=("eager", "grouped_mm")`` also times transformers' ``OlmoeSparseMoeBlock`` (routed
experts only, each ``experts_implementation`` named) in the same rounds, against a dense
SwiGLU of width ``top_k·d_expert`` (its own active FLOPs: OLMoE has no shared expert).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from moescale.allocator import retain_freed_memory
from moescale.errors import ConfigError, check_range
from moescale.model.config import MoEConfig
from moescale.model.cpu_kernels import kernels_status
from moescale.model.ffn import FeedForward
from moescale.model.moe import MoELayer
from moescale.model.moe_backends import _PADDED_MAX_WORK

__all__ = ["bench_moe_layer"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HF_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")
"""transformers' ``experts_implementation`` values the benchmark can time."""


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in module.parameters():
            p.grad = None
        x.grad = None
        out = module(x)
        if isinstance(out, tuple):  # (y, aux loss); older transformers: (y, router logits)
            y, aux = out[0], out[1]
            loss = y.float().sum() + (aux if aux.dim() == 0 else 0.0)
        else:
            loss = out.float().sum()
        loss.backward()

    return step


def bench_moe_layer(
    *,
    experts: int = 64,
    top_k: int = 8,
    shared: int = 1,
    d_model: int = 512,
    d_expert: int = 128,
    tokens: int = 8192,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 5,
    threads: int | None = None,
    loop: bool = True,
    seed: int = 0,
    hf: tuple[str, ...] = (),
    processes: int = 1,
) -> dict:
    """Time forward+backward of the MoE layer (``grouped`` back-end), the dense SwiGLU
    of width ``(top_k+shared)·d_expert`` and the reference ``loop`` back-end.

    Returns
    -------
    dict
        ``moe_ms``, ``dense_ms``, ``loop_ms`` (median milliseconds; ``loop_ms`` is None
        with ``loop=False``), ``ratio`` = moe_ms/dense_ms, ``loop_ratio`` = loop_ms/dense_ms,
        and the settings (``experts``, ``top_k``, ``shared``, ``d_model``, ``d_expert``,
        ``tokens``, ``device``, ``dtype``, ``repeats``, ``threads``, ``dense_width``).
        With ``hf``: ``hf`` = ``{implementation: {"ms", "ratio"}}`` and
        ``hf_dense_width`` / ``hf_dense_ms`` (the reference of those ratios).
        ``allocator``: ``retain`` where glibc keeps freed memory for reuse, as the trainer
        has it on CPU (:mod:`moescale.allocator`), else ``system``. ``cpu_kernels``:
        ``compiled`` where the routed experts run the compiled segment loops
        (:mod:`moescale.model.cpu_kernels`), ``python`` where they run the Python loop,
        ``None`` where neither applies (CUDA, bf16, or a problem small enough for the
        padded ``bmm`` path).
        With ``processes`` > 1 the whole measurement runs in that many fresh (spawned)
        interpreters one after another: every timing and ratio is then the median over
        processes, and ``per_process`` lists each one's ``moe_ms``, ``dense_ms``,
        ``ratio`` (and ``loop_ms``). A process's heap and thread state moves the dense
        reference by 10-20% before the allocator setting (docs/model.md): one process is
        one sample.

    Examples
    --------
    >>> r = bench_moe_layer(experts=4, top_k=2, d_model=32, d_expert=16, tokens=64,
    ...                     repeats=1)
    >>> sorted(k for k in r if k.endswith("_ms"))
    ['dense_ms', 'loop_ms', 'moe_ms']
    """
    for name, value, low in (
        ("experts", experts, 1), ("shared", shared, 0), ("d_model", d_model, 1),
        ("d_expert", d_expert, 1), ("tokens", tokens, 1), ("repeats", repeats, 1),
    ):
        check_range(name, value, low=low, integer=True)
    check_range("top_k", top_k, low=1, high=experts, integer=True)
    if dtype not in _DTYPES:
        raise ConfigError(f"'dtype' must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"'device' must be one of cpu, cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("'device' is cuda but torch.cuda.is_available() is False")
    if threads is not None:
        check_range("threads", threads, low=1, integer=True)
    check_range("processes", processes, low=1, integer=True)
    bad = [i for i in hf if i not in HF_IMPLEMENTATIONS]
    if bad:
        raise ConfigError(f"'hf' implementations must be among "
                          f"{', '.join(HF_IMPLEMENTATIONS)}; got {', '.join(bad)}")
    if processes > 1:
        return _across_processes(processes, dict(
            experts=experts, top_k=top_k, shared=shared, d_model=d_model, d_expert=d_expert,
            tokens=tokens, device=device, dtype=dtype, repeats=repeats, threads=threads,
            loop=loop, seed=seed, hf=tuple(hf)))
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    allocator = "retain" if device == "cpu" and retain_freed_memory() else "system"
    try:
        segments = tokens * top_k * d_model * d_expert > _PADDED_MAX_WORK  # not padded bmm
        kernels = (kernels_status() if device == "cpu" and dtype != "bfloat16" and segments
                   else None)
        return {**_run(experts, top_k, shared, d_model, d_expert, tokens, device, dtype, repeats,
                    loop, seed, tuple(hf)), "allocator": allocator, "cpu_kernels": kernels}
    finally:
        torch.set_num_threads(previous)


def _across_processes(n: int, kwargs: dict) -> dict:
    """:func:`bench_moe_layer` in ``n`` fresh spawned interpreters, one at a time; medians."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    records = []
    for _ in range(n):
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            records.append(pool.submit(bench_moe_layer, **kwargs).result())

    def med(key: str):
        values = [r[key] for r in records]
        return None if values[0] is None else statistics.median(values)

    out = dict(records[0])
    for key in ("moe_ms", "dense_ms", "loop_ms", "ratio", "loop_ratio", "hf_dense_ms"):
        if key in out:
            out[key] = med(key)
    for impl in out.get("hf", {}):
        out["hf"][impl] = {k: statistics.median(r["hf"][impl][k] for r in records)
                           for k in ("ms", "ratio")}
    out["processes"] = n
    out["per_process"] = [{k: r[k] for k in ("moe_ms", "dense_ms", "ratio", "loop_ms")}
                          for r in records]
    return out


def _hf_block(implementation: str, experts: int, top_k: int, d_model: int, d_expert: int):
    """transformers' OLMoE MoE block (softmax top-k router, routed SwiGLU experts)."""
    try:
        from transformers import OlmoeConfig
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    except ImportError:
        raise ConfigError("'hf' needs transformers: pip install 'moescale[hf]'") from None
    config = OlmoeConfig(hidden_size=d_model, intermediate_size=d_expert, num_experts=experts,
                         num_experts_per_tok=top_k, norm_topk_prob=False)
    config._experts_implementation = implementation
    return OlmoeSparseMoeBlock(config)


def _run(experts, top_k, shared, d_model, d_expert, tokens, device, dtype, repeats, loop,
         seed, hf=()) -> dict:
    torch.manual_seed(seed)
    dev, dt = torch.device(device), _DTYPES[dtype]

    def build(backend: str) -> MoELayer:
        torch.manual_seed(seed)
        layer = MoELayer(
            d_model=d_model, n_experts=experts, top_k=top_k, d_expert=d_expert,
            n_shared=shared, d_shared=d_expert, cfg=MoEConfig(backend=backend),
        )
        return _init(layer).to(dev, dt)

    dense_width = (top_k + shared) * d_expert
    dense = _init(FeedForward(d_model, dense_width)).to(dev, dt)
    x = torch.randn(tokens, d_model, device=dev, dtype=dt, requires_grad=True)
    steps = {"dense": _fwd_bwd(dense, x), "moe": _fwd_bwd(build("grouped"), x)}
    if loop:
        steps["loop"] = _fwd_bwd(build("loop"), x)
    hf_width = top_k * d_expert
    if hf and hf_width != dense_width:
        steps["hf_dense"] = _fwd_bwd(_init(FeedForward(d_model, hf_width)).to(dev, dt), x)
    x3 = x.detach().view(1, tokens, d_model).requires_grad_(True)
    for impl in hf:
        torch.manual_seed(seed)
        block = _init(_hf_block(impl, experts, top_k, d_model, d_expert)).to(dev, dt)
        steps[f"hf_{impl}"] = _fwd_bwd(block, x3)

    def timed(fn: Callable[[], None]) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return (time.perf_counter() - t0) * 1e3

    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    loop_ms = med.get("loop")
    extra = {}
    if hf:
        ref = med.get("hf_dense", med["dense"])
        extra = {"hf": {i: {"ms": med[f"hf_{i}"], "ratio": med[f"hf_{i}"] / ref} for i in hf},
                 "hf_dense_width": hf_width, "hf_dense_ms": ref}
    return {
        "moe_ms": med["moe"],
        "dense_ms": med["dense"],
        "loop_ms": loop_ms,
        "ratio": med["moe"] / med["dense"],
        "loop_ratio": None if loop_ms is None else loop_ms / med["dense"],
        "experts": experts, "top_k": top_k, "shared": shared, "d_model": d_model,
        "d_expert": d_expert, "tokens": tokens, "dense_width": dense_width,
        "device": device, "dtype": dtype, "repeats": repeats,
        "threads": torch.get_num_threads(),
        **extra,
    }


def _init(module: nn.Module) -> nn.Module:
    """[EL] init, every weight ~ N(0, 0.006²): a near-uniform router at the start."""
    for p in module.parameters():
        nn.init.normal_(p, std=0.006)
    return module
