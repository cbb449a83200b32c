"""Keep freed heap memory in a CPU training process (glibc ``mallopt``).

A training step allocates and frees the same large tensors every step: activations,
gradients and GEMM outputs of tens of MB. glibc serves allocations above its mmap threshold
(dynamic, capped at 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``, so every
step pays the page faults and the kernel's zeroing of those pages again. Whether a given
tensor is mmap'd depends on what the process freed before, so the same code runs at
different speeds in different processes.

:func:`retain_freed_memory` stops that: no ``mmap`` for ``malloc`` (``M_MMAP_MAX`` 0) and no
trimming of the heap's top (``M_TRIM_THRESHOLD`` at its maximum). Freed blocks stay in the
heap and are reused the next step; the resident size stays at its peak instead of
shrinking between steps. Measured on a 2-core EPYC (docs/model.md): ``bench train`` dense
MFU 0.707 → 0.752, MoE 0.606 → 0.626; the dense reference of ``bench moe-layer`` 546-660 ms
in processes where glibc mmap'd its buffers, 478-509 ms with this.

Process-wide, and not undone: the trainer and the benchmarks apply it on CPU.
``MOESCALE_MALLOC=system`` leaves the allocator alone. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether
    it is in effect: False off glibc or with ``MOESCALE_MALLOC=system``."""
    global _applied
    if os.environ.get("MOESCALE_MALLOC", "").strip().lower() == "system":
        return False
    if _applied is None:
        _applied = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    return _applied


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl, macOS, Windows)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(param, value))
