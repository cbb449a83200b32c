"""The example spec and sweep files shipped inside the package (``moescale/examples``).

In a source checkout ``moescale/examples`` links to the repository's ``examples/``; a wheel
carries the files as package data, so an installed moescale lists and copies them with
``moescale examples list`` / ``moescale examples copy NAME DEST``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from moescale.errors import ConfigError

__all__ = ["example_names", "example_text", "copy_example"]


def _root():
    return resources.files("moescale") / "examples"


def example_names() -> list[str]:
    """Names of the shipped examples, e.g. ``tiny-moe``, ``sweeps/demo`` (TOML files)."""
    names: list[str] = []
    stack = [("", _root())]
    while stack:
        prefix, folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((f"{prefix}{entry.name}/", entry))
            elif entry.name.endswith(".toml"):
                names.append(prefix + entry.name.removesuffix(".toml"))
    return sorted(names)


def example_text(name: str) -> str:
    """The text of example ``name`` (as listed by :func:`example_names`; ``.toml`` optional)."""
    name = name.removesuffix(".toml")
    names = example_names()
    if name not in names:
        raise ConfigError(f"'example' must be one of {', '.join(names)}; got {name!r}")
    return _root().joinpath(*f"{name}.toml".split("/")).read_text()


def copy_example(name: str, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy example ``name`` to ``dest`` (a folder, or a file path ending in ``.toml``);
    return the written path. An existing file is kept unless ``overwrite``."""
    from moescale.spec.io import atomic_write

    text = example_text(name)
    dest = Path(dest)
    stem = name.removesuffix(".toml").rsplit("/", 1)[-1]
    target = dest if dest.suffix == ".toml" else dest / f"{stem}.toml"
    if target.exists() and not overwrite:
        raise ConfigError(f"'dest' {target} already exists; pass --force to overwrite it")
    atomic_write(target, text)
    return target
