"""Read and write architecture specs: moescale TOML files and HF ``config.json``.

A moescale spec file is TOML with a ``[model]`` table holding :class:`ModelSpec`
fields (and an optional ``schema_version``); a ``.json`` file is read as a
Hugging Face config (see :mod:`moescale.spec.hf_config`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError
from moescale.spec.model_spec import SPEC_SCHEMA_VERSION, ModelSpec

__all__ = [
    "load_spec", "load_spec_with_extras", "dump_spec_toml", "save_spec", "atomic_write",
    "read_hf_json", "resolve_spec_path",
]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # fsync the directory too, so the rename itself survives a power cut
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read spec file {path}: {exc}") from None


def resolve_spec_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/config.json`` for a model folder (an HF checkpoint)."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"model folder {path} has no config.json")
        return config
    return path


def read_hf_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of an HF ``config.json`` (or of a model folder's)."""
    path = resolve_spec_path(path)
    try:
        cfg = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object (an HF config.json)")
    return cfg


def load_spec_with_extras(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, Any]]:
    """Load a spec and return it with the other top-level TOML tables (e.g. ``[train]``).

    ``path`` may be a model folder holding an HF ``config.json``.
    """
    path = resolve_spec_path(path)
    text = _read_text(path)
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        from moescale.spec.hf_config import from_hf_config

        name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
        return from_hf_config(read_hf_json(path), name=name, source=str(path)), {}
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is neither an HF config.json nor valid TOML: {exc}") from None
    version = doc.pop("schema_version", SPEC_SCHEMA_VERSION)
    if version != SPEC_SCHEMA_VERSION:
        raise ConfigError(
            f"'schema_version' must be {SPEC_SCHEMA_VERSION} in {path}; got {version!r}"
        )
    model = doc.pop("model", None)
    if not isinstance(model, dict):
        raise ConfigError(f"{path} has no [model] table: a spec file needs one")
    model.setdefault("name", path.stem)
    return ModelSpec.from_dict(model), doc


def load_spec(path: str | os.PathLike) -> ModelSpec:
    """Load a :class:`ModelSpec` from a moescale TOML spec or an HF ``config.json``."""
    return load_spec_with_extras(path)[0]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_spec_toml(spec: ModelSpec) -> str:
    """The spec as a moescale TOML document (``extra`` provenance dropped)."""
    lines = [f"schema_version = {SPEC_SCHEMA_VERSION}", "", "[model]"]
    for key, value in spec.to_dict().items():
        if key == "extra":
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_spec(spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write the spec as TOML, atomically."""
    atomic_write(path, dump_spec_toml(spec))
