"""Compiled CPU inner loops of the routed experts (``csrc/segment_swiglu.cpp``).

:class:`~moescale.model.moe_backends._SegmentSwiGLU` runs each worker's experts through
``segment_forward`` / ``segment_backward`` when this extension is available: the same
gathers, ATen GEMMs and scatter-adds as its Python loop, with the SwiGLU backward's
element-wise passes fused into one loop over rows, prefetched row gathers and no per-op
dispatch (measured gain in docs/model.md).

Built on first use with :func:`torch.utils.cpp_extension.load` (a C++ compiler and
``ninja``, a dependency of the ``train`` extra), ``-O3 -fopenmp-simd`` and, on x86-64
Linux, ``-march=native``. The build (~30 s on 2 cores) is cached in torch's extensions directory
(``TORCH_EXTENSIONS_DIR``) under a name keyed by the source, the flags, torch's version and the
CPU's instruction-set flags, so machines of different CPUs sharing a home directory do not share
a binary. When the build fails, a warning names the cause and the Python loop runs instead,
with the same numbers. ``MOESCALE_CPU_KERNELS=python`` skips the extension.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from moescale.errors import ConfigError

__all__ = ["KERNELS_ENV", "cpu_kernels", "kernels_status"]

KERNELS_ENV = "MOESCALE_CPU_KERNELS"
"""``compiled`` (the default, also when unset or empty) or ``python`` (the Python loop, no
build); any other value is refused with a :class:`~moescale.errors.ConfigError`."""
_CHOICES = ("compiled", "python")

_SOURCE = Path(__file__).with_name("csrc") / "segment_swiglu.cpp"
_lock = threading.Lock()
_cache: dict[str, ModuleType | None] = {}
_log = logging.getLogger(__name__)


def _disabled() -> bool:
    value = os.environ.get(KERNELS_ENV, "").strip().lower() or "compiled"
    if value not in _CHOICES:
        raise ConfigError(f"{KERNELS_ENV} must be one of {', '.join(_CHOICES)}; got {value!r}")
    return value == "python"


def _native() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (Linux), the build's key beside the source."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_name(flags: list[str]) -> str:
    key = b"\0".join((_SOURCE.read_bytes(), torch.__version__.encode(), _cpu_flags().encode(),
                      " ".join(flags).encode()))
    return "moescale_segment_" + hashlib.sha256(key).hexdigest()[:12]


def cpu_kernels() -> ModuleType | None:
    """The compiled extension, built on first call; ``None`` when disabled by
    :data:`KERNELS_ENV` or when it cannot be built (warned once, with the cause)."""
    if _disabled():
        return None
    with _lock:
        if "module" not in _cache:
            _cache["module"] = _build()
        return _cache["module"]


def _build() -> ModuleType | None:
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-fopenmp-simd", "-fno-trapping-math",
             *(["-march=native"] if _native() else [])]
    name = _build_name(flags)
    _log.info("loading moescale's CPU expert kernels %s (a first build takes ~30 s)", name)
    path = os.environ.get("PATH")
    try:
        if shutil.which("ninja") is None:  # the pip package's binary, venv not activated
            import ninja

            os.environ["PATH"] = os.pathsep.join(p for p in (ninja.BIN_DIR, path) if p)
        return load(name=name, sources=[str(_SOURCE)], extra_cflags=flags, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed compile: use the Python loop
        lines = str(exc).strip().splitlines()
        errors = [ln.strip() for ln in lines if "error:" in ln]  # the compiler's message
        cause = (errors or lines[-1:] or [type(exc).__name__])[0][:300]
        warnings.warn(
            f"moescale's CPU expert kernels could not be built ({cause}); the routed "
            f"experts run the Python loop (same results, slower; set {KERNELS_ENV}=python "
            "to skip the build)",
            RuntimeWarning, stacklevel=3,
        )
        return None
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path


def kernels_status() -> str:
    """``compiled`` when the extension is in use, else ``python`` (builds it if needed)."""
    return "compiled" if cpu_kernels() is not None else "python"
