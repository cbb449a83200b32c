"""Back-ends of the routed experts: dispatch, expert SwiGLUs and combine (torchtitan style).

A back-end is a function ``(x [T, D], expert_idx [T, K], gates [T, K], experts, shared=None)
-> [T, D]`` computing ``y_t = Σ_k gates[t, k] · Expert_{expert_idx[t, k]}(x_t)`` (plus
``shared(x_t)`` when the shared experts' ``FeedForward`` is given). An ``expert_idx``
equal to E marks an assignment dropped by the capacity limit: it contributes nothing.
The weights live in :class:`~moescale.model.moe.RoutedExperts`, so every back-end has the
same ``state_dict`` keys.

- :func:`loop_experts` — the readable reference: for each expert, find its tokens,
  run its SwiGLU, add the weighted output back. Kept forever to test the others against.
- :func:`grouped_experts` — one stable ``argsort`` of the T·K assignments by expert gives
  contiguous per-expert segments. On CUDA in bf16 the segments go through
  ``torch.nn.functional.grouped_mm`` (one kernel per projection), with an atomic-free
  gather and combine (:class:`_GatherRows`, :class:`_CombineRows`). Elsewhere a custom
  autograd function processes one segment at a time
  (gather → fused gate/up GEMM → SwiGLU → down GEMM → weighted ``index_add``), which
  keeps each segment's activations in cache and never materialises the T·K×D gathered
  copies; backward reuses the stored gate/up pre-activations (no GEMM recomputed). In
  fp32/fp64 the per-worker loops run compiled (:mod:`moescale.model.cpu_kernels`), with
  this Python loop as the fallback.
  Small problems on CPU (T·K·D·F ≤ 2²², the model sizes of a CPU sweep) instead pad every
  expert's rows to the largest segment and run two ``bmm`` calls: a fixed ~20 operations
  whatever E, 1.5× faster than the per-expert loop at d_model 12 (measured).
  The compiled loops run segments in ~1 MB chunks, let the workers share a tail of small
  experts (:func:`_schedule`) and run an ungated shared expert as one more work item.
  Measured on a 2-core CPU this is ~1.14× a dense SwiGLU of equal active FLOPs
  (docs/model.md), against 1.85× for transformers' OLMoE block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from moescale.errors import ConfigError
from moescale.model.cpu_kernels import cpu_kernels
from moescale.model.ffn import swiglu

__all__ = [
    "loop_experts", "grouped_experts", "resolve_backend", "get_backend", "grouped_mm_usable",
]


def loop_experts(
    x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, experts, shared=None
) -> torch.Tensor:
    """Reference per-expert loop (plain autograd), plus ``shared(x)`` if given."""
    out = torch.zeros_like(x)
    for e in range(experts.n_experts):
        token, slot = torch.where(expert_idx == e)
        if token.numel() == 0:
            continue
        h = x[token] @ experts.w_gate_up[e].t()
        y = swiglu(h) @ experts.w_down[e].t()
        out.index_add_(0, token, y * gates[token, slot, None])
    return out if shared is None else out + shared(x)


_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has no pool threads: start afresh
    os.register_at_fork(after_in_child=_POOLS.clear)
_PARALLEL_MIN_WORK = 1 << 24  # assignments x D x F below which one thread is faster


def _partition(bounds: list[int], n: int) -> list[list[int]]:
    """Split the non-empty experts into ``n`` parts of near-equal token counts (greedy LPT)."""
    sizes = sorted(
        ((bounds[e + 1] - bounds[e], e) for e in range(len(bounds) - 1)
         if bounds[e + 1] > bounds[e]),
        reverse=True,
    )
    parts: list[list[int]] = [[] for _ in range(min(n, len(sizes)) or 1)]
    loads = [0] * len(parts)
    for size, e in sizes:
        i = loads.index(min(loads))
        parts[i].append(e)
        loads[i] += size
    return [sorted(p) for p in parts]


def _schedule(bounds: list[int], n: int, eligible: int) -> tuple[list[list[int]], list[int]]:
    """Static parts and a dynamic tail for ``n`` workers of the compiled loops.

    The smallest non-empty experts, up to two per worker and a quarter of them all, form the
    tail: each worker runs its part (:func:`_partition` of the others), then claims tail
    experts until none is left, so a worker slowed by the machine (measured: the two finish
    up to 10 ms apart on a 2-core host, and which one is late changes from call to call)
    leaves its share of the tail to the other. A tail expert's rows are added afterwards in
    a fixed order, so the result does not depend on which worker ran it. Only experts
    ``e < eligible`` join the tail (the shared expert, index E, is always static). One
    worker: no tail.
    """
    if n == 1:
        return _partition(bounds, 1), []
    sizes = sorted((bounds[e + 1] - bounds[e], e) for e in range(eligible)
                   if bounds[e + 1] > bounds[e])
    tail = [e for _, e in sizes[: min(2 * n, len(sizes) // 4)]]
    keep = set(tail)
    static = [bounds[0]]  # the bounds with the tail experts emptied
    for e in range(len(bounds) - 1):
        static.append(static[-1] + (0 if e in keep else bounds[e + 1] - bounds[e]))
    return _partition(static, n), tail


def _expert_parallel(work: Callable[[list[int]], torch.Tensor], parts: list[list[int]]):
    """Run ``work`` on each part of the experts, one single-threaded worker per part.

    Per-expert GEMMs are small (~1000 rows); splitting each across threads costs one
    synchronisation per op, which a shared or busy machine turns into scheduler-slice
    stalls. Running whole experts on separate single-threaded workers has no such
    barrier. Workers get ``torch.set_num_threads(1)``; the caller's setting is restored.
    """
    n = len(parts)
    if n == 1 or _get_current_dispatch_mode() is not None:  # e.g. FlopCounterMode: this thread
        with torch.no_grad():
            return [work(part) for part in parts]
    pool = _POOLS.get(n)
    if pool is None:
        pool = _POOLS[n] = ThreadPoolExecutor(
            n, thread_name_prefix="moescale-experts", initializer=torch.set_num_threads,
            initargs=(1,),
        )

    def run(part: list[int]) -> torch.Tensor:
        with torch.no_grad():  # grad mode is thread-local
            return work(part)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return list(pool.map(run, parts))
    finally:
        torch.set_num_threads(threads)


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out.add_(t)
    return out


def _workspace(like: torch.Tensor, rows: int, *widths: int) -> list[torch.Tensor]:
    """One ``[rows, w]`` scratch buffer per width, sliced per segment (``buf[:n]`` is
    contiguous). Allocating the ~1-2 MB per-expert temporaries afresh costs a page-fault
    pass each time (measured: ``index_select`` 134 µs with a new output, 73 µs into a
    reused one, at 1024×512 fp32); one buffer per worker and call avoids it."""
    return [like.new_empty(rows, w) for w in widths]


def _compiled_kernels(x: torch.Tensor):
    """The compiled segment loops (:mod:`moescale.model.cpu_kernels`) where they apply:
    CPU, fp32/fp64, no dispatch mode (a ``FlopCounterMode`` must see every GEMM op);
    ``None`` runs the Python loop below."""
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or _get_current_dispatch_mode() is not None):
        return None
    return cpu_kernels()


class _Deferred:
    """The tail experts' rows of one pass (:func:`_schedule`): a buffer the workers fill and
    a shared claim counter, then one ordered scatter-add into the summed output (both in
    one pass of the compiled ``reduce_parts``)."""

    def __init__(self, x: torch.Tensor, token: torch.Tensor, bounds: list[int],
                 tail: list[int], rows: bool = True) -> None:
        self.tail = tail
        sizes = [bounds[e + 1] - bounds[e] for e in tail]
        self.offsets = [0]
        for size in sizes[:-1]:
            self.offsets.append(self.offsets[-1] + size)
        keep = bool(tail) and rows  # backward without dx: a tail but no rows to add
        self.rows = x.new_empty(sum(sizes), x.shape[1]) if keep else None
        self.counter = torch.zeros(1, dtype=torch.int64) if tail else None
        self.token = (torch.cat([token[bounds[e]: bounds[e + 1]] for e in tail]) if keep
                      else None)

    def args(self) -> tuple:
        """``tail, tail_offsets, tail_rows, counter`` of the compiled loops."""
        return self.tail, self.offsets, self.rows, self.counter

    def reduce(self, outs: list[torch.Tensor], kernels) -> torch.Tensor:
        """The workers' outputs summed, plus the tail rows (in a fixed order)."""
        if kernels is None:
            return _sum(outs)
        return kernels.reduce_parts(outs, self.token, self.rows)


class _SegmentSwiGLU(torch.autograd.Function):
    """Routed SwiGLU experts over expert-sorted assignments, one fused pass per segment,
    plus (optionally) the shared expert.

    Inputs: x [T, D]; gates [N] and token [N] sorted by expert; w_gate_up [E, 2F, D];
    w_down [E, D, F]; bounds: Python list of E+1 segment boundaries into the sorted order;
    ws_gate_up [2F_s, D] and ws_down [D, F_s], the shared expert's weights, or ``None``.
    The shared expert is one more work item (index E) over all T rows of x, read in place
    (no gather) with weight 1 and accumulated straight into the output (no scatter, no
    separate ``routed + shared`` pass).
    Experts are split over ``torch.get_num_threads()`` single-threaded workers, each
    accumulating into its own [T, D] buffer (summed at the end); every other output
    (gate/up activations, gate and weight gradients) is written to disjoint slices.
    Every per-segment temporary lives in a per-worker workspace (:func:`_workspace`).
    """

    @staticmethod
    def forward(ctx, x, gates, w_gate_up, w_down, token, bounds, ws_gate_up, ws_down):
        d, f = x.shape[1], w_down.shape[-1]
        n_exp, shared = len(bounds) - 1, ws_down is not None
        h_all = x.new_empty(bounds[-1], 2 * f)
        hs_all = x.new_empty(x.shape[0], ws_gate_up.shape[0]) if shared else None
        # Worker threads pay off on CPU once the segments are big enough (~measured).
        big = bounds[-1] * d * f >= _PARALLEL_MIN_WORK
        threads = torch.get_num_threads() if (x.device.type == "cpu" and big) else 1
        sizes = bounds + [bounds[-1] + x.shape[0]] if shared else bounds  # E: the shared one
        kernels = _compiled_kernels(x)
        if kernels is not None:
            x, gates, token = x.contiguous(), gates.contiguous(), token.contiguous()
            parts, tail = _schedule(sizes, threads, n_exp)
        else:
            parts, tail = _partition(sizes, threads), []
        parts = [sorted(p, key=lambda e: e != n_exp) for p in parts]  # the shared one first
        deferred = _Deferred(x, token, bounds, tail)

        def work(experts: list[int]) -> torch.Tensor:
            if kernels is not None:  # a worker starting with the shared expert: no zeroing
                empty = experts[:1] == [n_exp]
                out = torch.empty_like(x) if empty else torch.zeros_like(x)
                kernels.segment_forward(x, gates, w_gate_up, w_down, token, bounds, experts,
                                        h_all, out, *deferred.args(), ws_gate_up, ws_down,
                                        hs_all, empty)
                return out
            out = torch.zeros_like(x)
            rows = max((bounds[e + 1] - bounds[e] for e in experts if e < n_exp), default=0)
            xs_buf, y_buf, act_buf = _workspace(x, rows, d, d, f)
            for e in experts:
                if e == n_exp:  # the shared expert: all rows, weight 1
                    hs = torch.mm(x, ws_gate_up.t(), out=hs_all)
                    out.add_(torch.mm(swiglu(hs), ws_down.t()))
                    continue
                a, b = bounds[e], bounds[e + 1]
                idx = token[a:b]
                xs = torch.index_select(x, 0, idx, out=xs_buf[: b - a])
                h = torch.mm(xs, w_gate_up[e].t(), out=h_all[a:b])
                act = torch.ops.aten.silu.out(h[:, :f], out=act_buf[: b - a])
                act.mul_(h[:, f:]).mul_(gates[a:b, None])  # SwiGLU × gate: F < D
                out.index_add_(0, idx, torch.mm(act, w_down[e].t(), out=y_buf[: b - a]))
            return out

        out = deferred.reduce(_expert_parallel(work, parts), kernels)
        ctx.save_for_backward(x, gates, w_gate_up, w_down, token, h_all, ws_gate_up, ws_down,
                              hs_all)
        ctx.bounds, ctx.parts, ctx.tail, ctx.kernels = bounds, parts, tail, kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, gates, w_gate_up, w_down, token, h_all, ws_gate_up, ws_down, hs_all = (
            ctx.saved_tensors)
        need_x, need_g, need_wgu, need_wd = ctx.needs_input_grad[:4]
        need_wsgu, need_wsd = ctx.needs_input_grad[6:8]
        d, f = x.shape[1], w_down.shape[-1]
        n_exp = len(ctx.bounds) - 1
        dgates = torch.zeros_like(gates) if need_g else None
        dwgu = torch.empty_like(w_gate_up) if need_wgu else None
        dwd = torch.empty_like(w_down) if need_wd else None
        dwsgu = torch.empty_like(ws_gate_up) if need_wsgu else None
        dwsd = torch.empty_like(ws_down) if need_wsd else None
        bounds = ctx.bounds
        idle = [e for e in range(n_exp) if bounds[e + 1] == bounds[e]]
        for grad in (dwgu, dwd):
            if grad is not None and idle:
                grad[idle] = 0.0  # experts that received no token

        kernels = ctx.kernels
        if kernels is not None:
            dout = dout.contiguous()
        deferred = _Deferred(x, token, bounds, ctx.tail, rows=need_x)

        def work(experts: list[int]) -> torch.Tensor | None:
            if kernels is not None:
                empty = experts[:1] == [n_exp]
                dx = None if not need_x else torch.empty_like(x) if empty else torch.zeros_like(x)
                kernels.segment_backward(dout, x, gates, w_gate_up, w_down, token, h_all,
                                         bounds, experts, dx, dgates, dwgu, dwd,
                                         *deferred.args(), ws_gate_up, ws_down, hs_all, dwsgu,
                                         dwsd, empty)
                return dx
            dx = torch.zeros_like(x) if need_x else None
            rows = max((bounds[e + 1] - bounds[e] for e in experts if e < n_exp), default=0)
            dy_buf, xs_buf, silu_buf, act_buf, tmp_buf, dact_buf = _workspace(
                x, rows, d, d, f, f, f, f)
            dh_buf, dxs_buf = _workspace(x, rows, 2 * f, d)
            for e in experts:
                if e == n_exp:
                    _shared_backward(dout, x, ws_gate_up, ws_down, hs_all, dx, dwsgu, dwsd)
                    continue
                a, b = bounds[e], bounds[e + 1]
                n, idx, w = b - a, token[a:b], gates[a:b, None]
                g, u = h_all[a:b, :f], h_all[a:b, f:]
                silu = torch.ops.aten.silu.out(g, out=silu_buf[:n])
                act = torch.mul(silu, u, out=act_buf[:n])
                dy = torch.index_select(dout, 0, idx, out=dy_buf[:n])  # [n, D]
                if need_wd:
                    torch.mm(dy.t(), torch.mul(act, w, out=tmp_buf[:n]), out=dwd[e])
                dact = torch.mm(dy, w_down[e], out=dact_buf[:n])  # [n, F], before the gate
                if need_g:
                    torch.sum(torch.mul(dact, act, out=tmp_buf[:n]), -1, out=dgates[a:b])
                if not (need_x or need_wgu):
                    continue
                dact.mul_(w)
                dh = dh_buf[:n]
                torch.ops.aten.silu_backward.grad_input(  # one fused kernel, into dh
                    torch.mul(dact, u, out=tmp_buf[:n]), g, grad_input=dh[:, :f])
                torch.mul(dact, silu, out=dh[:, f:])
                if need_wgu:
                    xs = torch.index_select(x, 0, idx, out=xs_buf[:n])
                    torch.mm(dh.t(), xs, out=dwgu[e])
                if need_x:
                    dx.index_add_(0, idx, torch.mm(dh, w_gate_up[e], out=dxs_buf[:n]))
            return dx

        dxs = _expert_parallel(work, ctx.parts)
        dx = deferred.reduce(dxs, kernels) if need_x else None
        return dx, dgates, dwgu, dwd, None, None, dwsgu, dwsd


def _shared_backward(dout, x, ws_gate_up, ws_down, hs, dx, dwsgu, dwsd) -> None:
    """The shared expert's part of :class:`_SegmentSwiGLU`'s backward (Python loop)."""
    fs = ws_down.shape[1]
    g, u = hs[:, :fs], hs[:, fs:]
    silu = F.silu(g)
    dact = torch.mm(dout, ws_down)
    if dwsd is not None:
        torch.mm(dout.t(), silu * u, out=dwsd)
    dh = torch.cat([torch.ops.aten.silu_backward(dact * u, g), dact * silu], dim=1)
    if dwsgu is not None:
        torch.mm(dh.t(), x, out=dwsgu)
    if dx is not None:
        dx.add_(torch.mm(dh, ws_gate_up))


_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
"""``torch.nn.functional.grouped_mm`` (its private ``torch._grouped_mm`` before the public
name existed), or ``None`` on a torch with neither."""


def grouped_mm_usable(x: torch.Tensor, w_gate_up: torch.Tensor) -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` can run these shapes: CUDA, bf16 input
    and weights, compute capability >= 8.0, 16-byte aligned rows (D, F multiples of 8)."""
    if not (_GROUPED_MM is not None and x.is_cuda and x.dtype == torch.bfloat16):
        return False
    if w_gate_up.dtype != torch.bfloat16:
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    return x.shape[-1] % 8 == 0 and (w_gate_up.shape[1] // 2) % 8 == 0


class _GatherRows(torch.autograd.Function):
    """``xs = x[token]``: token rows in expert-sorted order (``token = order // K``).

    Backward without atomics: ``inv`` (the inverse of ``order``) puts the [T·K, D] row
    gradients back in (token, slot) order, and a sum over the K slots gives dx. Autograd's
    own backward of ``index_select`` is an ``index_add`` scatter (atomic adds, in bf16 on
    the CUDA path). :class:`_CombineRows` is its adjoint.
    """

    @staticmethod
    def forward(ctx, x, token, inv, top_k):
        ctx.save_for_backward(inv)
        ctx.top_k = top_k
        return x.index_select(0, token)

    @staticmethod
    def backward(ctx, grad):  # differentiable ops only: compiles, and double backward works
        (inv,) = ctx.saved_tensors
        return _sum_slots(grad, inv, ctx.top_k), None, None, None


def _sum_slots(ys: torch.Tensor, inv: torch.Tensor, top_k: int) -> torch.Tensor:
    """[T·K, D] expert-sorted rows → [T, D]: back to (token, slot) order, summed over slots."""
    return ys.index_select(0, inv).view(-1, top_k, ys.shape[1]).sum(1)


class _Permute(torch.autograd.Function):
    """``v[order]`` for a permutation ``order`` of a 1-D ``v``, whose backward is the gather
    ``grad[inv]`` by the inverse permutation: deterministic on every device, and cheaper on
    CPU than autograd's backward of indexing, an accumulating ``index_put_`` that sorts the
    indices (2.0 ms a step in the layer's profile at T·K = 65,536; forward + backward alone
    0.68 → 0.22 ms)."""

    @staticmethod
    def forward(ctx, v, order, inv):
        ctx.save_for_backward(inv)
        return v.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):  # differentiable ops only: double backward works
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """The inverse of the permutation ``order`` (``inv[order[i]] = i``)."""
    return torch.empty_like(order).scatter_(
        0, order, torch.arange(order.numel(), device=order.device))


class _CombineRows(torch.autograd.Function):
    """``y[t] = Σ_k ys[slot of (t, k)]``: expert-sorted rows back to tokens, as a gather by
    ``inv`` and a sum over the K slots (accumulated in fp32 by ``sum``, no atomics);
    backward is :class:`_GatherRows`'s forward, ``dys = dy[token]``."""

    @staticmethod
    def forward(ctx, ys, token, inv, top_k):
        ctx.save_for_backward(token)
        return _sum_slots(ys, inv, top_k)

    @staticmethod
    def backward(ctx, grad):
        (token,) = ctx.saved_tensors
        return grad.index_select(0, token), None, None, None


def _grouped_mm_path(x, expert_sorted, gates_sorted, order, inv, top_k, w_gate_up,
                     w_down) -> torch.Tensor:
    """CUDA: gather once, two grouped GEMMs over the segments, one combine back; no host
    sync and no atomic adds (:class:`_GatherRows`, :class:`_CombineRows`).

    Rows past ``offs[-1]`` (assignments dropped by a capacity limit, sorted last) are left
    unwritten by the kernel in both passes, so they hold whatever the memory held, NaN
    included. The ``where`` masks keep it out of the output and of every gradient: ``h`` is
    masked before the SwiGLU (else the gate gradient ``dact · swiglu(h)`` of a dropped
    row is ``0 · NaN``), and ``act``'s mask zeroes the unwritten rows of its gradient.
    """
    n_experts = w_gate_up.shape[0]
    token = order // top_k
    counts = torch.bincount(expert_sorted, minlength=n_experts + 1)[:n_experts]
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    valid = (expert_sorted < n_experts)[:, None]
    xs = torch.where(valid, _GatherRows.apply(x, token, inv, top_k), 0.0)
    # w.transpose(-2, -1) of the (out, in) weights is the column-major mat_b the kernel wants.
    h = torch.where(valid, _GROUPED_MM(xs, w_gate_up.transpose(-2, -1), offs=offs), 0.0)
    act = torch.where(valid, swiglu(h) * gates_sorted[:, None], 0.0)
    y = _GROUPED_MM(act, w_down.transpose(-2, -1), offs=offs)
    y = torch.where(valid, y, 0.0)
    return _CombineRows.apply(y, token, inv, top_k).to(x.dtype)


def _padded_path(x, expert_sorted, gates_sorted, token, counts, w_gate_up,
                 w_down) -> torch.Tensor:
    """Small problems on CPU: every expert's rows padded to the largest segment, two
    ``bmm`` calls over all experts, plain autograd.

    A fixed ~20 operations whatever E is: at the model sizes of a CPU sweep (d_model ~10-50)
    the per-expert loop's few dozen operations per expert cost more than the arithmetic.
    Padding rows are zeros (SwiGLU(0) = 0, gate 0), so they add nothing to any output or
    gradient.
    """
    n_experts, d = w_gate_up.shape[0], x.shape[1]
    cap = int(counts.max()) if counts.numel() else 0
    valid = expert_sorted < n_experts
    e_v, tok, g = expert_sorted[valid], token[valid], gates_sorted[valid]
    starts = torch.cumsum(counts, 0) - counts
    slot = e_v * cap + torch.arange(e_v.numel(), device=x.device) - starts[e_v]
    xs = x.new_zeros(n_experts * cap, d).index_copy(0, slot, x.index_select(0, tok))
    gp = g.new_zeros(n_experts * cap).index_copy(0, slot, g)
    h = torch.bmm(xs.view(n_experts, cap, d), w_gate_up.transpose(1, 2))
    act = swiglu(h) * gp.view(n_experts, cap, 1)
    y = torch.bmm(act, w_down.transpose(1, 2)).reshape(n_experts * cap, d)
    return x.new_zeros(x.shape).index_add(0, tok, y.index_select(0, slot))


_PADDED_MAX_WORK = 1 << 22  # T·K·D·F up to which padding beats the loop (docs/model.md)


def _shared_ffn(x: torch.Tensor, shared: tuple | None) -> torch.Tensor | None:
    """The shared expert ``FeedForward`` from its (gate_up, down) weights, or ``None``."""
    if shared is None:
        return None
    return F.linear(swiglu(F.linear(x, shared[0])), shared[1])


def _grouped(x, expert_idx, gates, w_gate_up, w_down, shared=None) -> torch.Tensor:
    """Routed experts (+ the shared expert from its ``(gate_up, down)`` weights, if given)."""
    n_experts = w_gate_up.shape[0]
    top_k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    inv = _inverse(order)
    gates_sorted = _Permute.apply(gates.reshape(-1), order, inv).to(x.dtype)
    if grouped_mm_usable(x, w_gate_up):
        out = _grouped_mm_path(x, flat[order], gates_sorted, order, inv, top_k, w_gate_up,
                               w_down)
        return out if shared is None else out + _shared_ffn(x, shared)
    counts = torch.bincount(flat, minlength=n_experts + 1)[:n_experts]
    if (flat.numel() * x.shape[1] * w_down.shape[-1] <= _PADDED_MAX_WORK
            and _get_current_dispatch_mode() is None):  # FlopCounterMode: count real work
        out = _padded_path(x, flat[order], gates_sorted, token, counts, w_gate_up, w_down)
        return out if shared is None else out + _shared_ffn(x, shared)
    return _segments(x, gates_sorted, w_gate_up, w_down, token, counts, shared)


@torch.compiler.disable  # host-side bounds and compiled loops: eager under torch.compile
def _segments(x, gates_sorted, w_gate_up, w_down, token, counts, shared) -> torch.Tensor:
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    ws_gate_up, ws_down = shared if shared is not None else (None, None)
    return _SegmentSwiGLU.apply(x, gates_sorted, w_gate_up, w_down, token, bounds, ws_gate_up,
                                ws_down)


def grouped_experts(
    x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, experts, shared=None
) -> torch.Tensor:
    """Sorted/grouped back-end: one permutation, contiguous per-expert segments.

    ``shared`` (a :class:`~moescale.model.ffn.FeedForward`, the shared experts) is added to
    the output; the CPU segment loops run it as one more work item of their workers.
    Under ``torch.autocast`` the experts run in the autocast dtype (input, gates and
    weights cast, as autocast does for ``nn.Linear``), so bf16 autocast on CUDA takes the
    ``grouped_mm`` path; the output is in that dtype.
    """
    w_gate_up, w_down = experts.w_gate_up, experts.w_down
    ws = None if shared is None else (shared.gate_up.weight, shared.down.weight)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _grouped(x.to(dtype), expert_idx, gates.to(dtype), w_gate_up.to(dtype),
                            w_down.to(dtype), ws and tuple(w.to(dtype) for w in ws))
    return _grouped(x, expert_idx, gates, w_gate_up, w_down, ws)


_BACKENDS: dict[str, Callable] = {"loop": loop_experts, "grouped": grouped_experts}


def resolve_backend(name: str) -> str:
    """The concrete back-end a :data:`~moescale.model.config.MOE_BACKENDS` name runs:
    ``auto`` is ``grouped`` on every device (which itself picks ``grouped_mm`` on CUDA in
    bf16 and the segment loop elsewhere); ``loop`` and ``grouped`` are themselves."""
    if name == "auto":
        return "grouped"
    if name not in _BACKENDS:
        raise ConfigError(
            f"'backend' must be one of auto, {', '.join(_BACKENDS)}; got {name!r}"
        )
    return name


def get_backend(name: str) -> Callable:
    """The experts function of a :data:`~moescale.model.config.MOE_BACKENDS` name."""
    return _BACKENDS[resolve_backend(name)]
