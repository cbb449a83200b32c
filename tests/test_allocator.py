"""glibc keeps freed memory in training processes (moescale.allocator)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from moescale import allocator

_PROBE = """
import ctypes, torch
from moescale import allocator

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost").split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def mmapped_by(n_bytes):
    before = libc.mallinfo2().hblkhd
    t = torch.empty(n_bytes // 4, dtype=torch.float32)
    grown = libc.mallinfo2().hblkhd - before
    del t
    return grown

print(mmapped_by(100 * 2**20) >= 100 * 2**20, allocator.retain_freed_memory(),
      mmapped_by(100 * 2**20))
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_tensors_come_from_the_heap_once_applied():
    """In a fresh process a 100 MiB tensor is mmap'd (glibc's default); after
    retain_freed_memory() the same request is served from the heap (no mmap'd bytes)."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "0"]


def test_opt_out_and_non_glibc(monkeypatch):
    monkeypatch.setenv("MOESCALE_MALLOC", "system")
    assert allocator.retain_freed_memory() is False
    monkeypatch.delenv("MOESCALE_MALLOC")

    def no_libc(*args, **kwargs):
        raise OSError("no libc here")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_libc)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory() is False
