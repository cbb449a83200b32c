"""Optional dependencies ("extras") and the one-line error a missing one gives.

The core install (spec, laws, fit, report text) needs numpy, scipy, pandas, typer and
rich only. Everything heavier is an extra of the ``moescale`` package and imported
lazily, where it is used; a missing one raises :class:`MissingExtraError` naming the
extra to install (the CLI prints it as one line and exits 2).
"""

from __future__ import annotations

from moescale.errors import MoescaleError

__all__ = ["EXTRA_OF", "MissingExtraError", "missing_extra"]

EXTRA_OF: dict[str, str] = {
    "torch": "train",
    "tokenizers": "train",
    "matplotlib": "report",
    "pyarrow": "parquet",
    "tensorboard": "tensorboard",
    "ray": "ray",
    "transformers": "hf",
    "safetensors": "train",  # final weights are written as safetensors; [hf] has it too
}
"""Top-level module → the extra of ``pyproject.toml`` that installs it."""


class MissingExtraError(MoescaleError):
    """An optional dependency is not installed; the message names the extra."""


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for ``exc`` if it is a missing optional dependency
    (``exc.name`` is one of :data:`EXTRA_OF`, or pandas asks for pyarrow), else ``None``.

    >>> str(missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch")))
    "this command needs torch: pip install 'moescale[train]'"
    """
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_OF and "pyarrow" in str(exc):  # pandas' parquet engine message
        module = "pyarrow"
    if module not in EXTRA_OF:
        return None
    return MissingExtraError(
        f"this command needs {module}: pip install 'moescale[{EXTRA_OF[module]}]'"
    )
