"""Safe, integrity-checked training checkpoints: everything needed for a bit-identical resume.

A checkpoint holds the model and optimizer state, the next step to run, the RNG
states (torch, CUDA, numpy, python — as tensors and plain lists), the number of
``metrics.jsonl`` lines written so far, the accumulated wall time and the run key
(config + spec) that a resume must match. Nothing else is pickled: files load with
``torch.load(weights_only=True)``, so a planted pickle cannot run code.

Integrity: the payload carries a manifest with a SHA-256 per tensor (data, dtype,
shape) and one over every non-tensor field; :func:`load_checkpoint` recomputes them
and refuses a damaged file. Two generations are kept: ``checkpoint.pt`` (newest) and
``checkpoint.prev.pt``. A save moves the newest to ``.prev``, writes the new one with
:func:`~moescale.spec.io.atomic_write` (temp file, fsync, rename) and reads it back to
verify it; a resume takes the newest checkpoint that verifies.

Final weights go to ``model.pt`` (a plain state dict) and ``model.safetensors`` (same
moescale key names); :func:`load_weights` reads either safely.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moescale.errors import ConfigError, DataError
from moescale.spec.io import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "MODEL_NAME",
    "SAFETENSORS_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "encode_checkpoint",
    "read_checkpoint_file",
    "DamagedCheckpoint",
    "verify_checkpoint",
    "remove_checkpoints",
    "remove_temp_files",
    "rng_state",
    "set_rng_state",
    "save_weights",
    "load_weights",
]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
DAMAGED_CHECKPOINT_NAME = "checkpoint.damaged.pt"
MODEL_NAME = "model.pt"
SAFETENSORS_NAME = "model.safetensors"
CHECKPOINT_VERSION = 2
"""2: weights-only payload with a SHA-256 manifest (1: pickled RNG state, no manifest)."""


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG a training step could touch, as tensors and plain Python values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(mt), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- manifest
def _walk(obj: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _walk(obj[k], f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}/{i}")


def _skeleton(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a placeholder (the JSON-hashable remainder)."""
    if isinstance(obj, torch.Tensor):
        return "<tensor>"
    if isinstance(obj, dict):
        return {str(k): _skeleton(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_skeleton(v) for v in obj]
    return obj


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    data = t.detach().cpu().contiguous().reshape(-1)
    if data.numel():
        h.update(data.view(torch.uint8).numpy())
    return h.hexdigest()


def _manifest(payload: dict[str, Any]) -> dict[str, Any]:
    meta = json.dumps(_skeleton(payload), sort_keys=True, allow_nan=True)
    return {
        "algorithm": "sha256",
        "tensors": {p: tensor_sha256(t) for p, t in _walk(payload, "")},
        "meta": hashlib.sha256(meta.encode()).hexdigest(),
    }


def _verify_manifest(ckpt: dict[str, Any], path: Path) -> None:
    manifest = ckpt.pop("manifest", None)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise DamagedCheckpoint(f"{path} has no integrity manifest")
    want = manifest["tensors"]
    got = dict(_walk(ckpt, ""))
    if set(got) != set(want):
        missing = sorted(set(want) ^ set(got))[:3]
        raise DamagedCheckpoint(f"{path}: tensors differ from its manifest ({', '.join(missing)})")
    for p, t in got.items():
        if tensor_sha256(t) != want[p]:
            raise DamagedCheckpoint(f"{path}: checksum mismatch in tensor {p.lstrip('/')}")
    meta = json.dumps(_skeleton(ckpt), sort_keys=True, allow_nan=True)
    if hashlib.sha256(meta.encode()).hexdigest() != manifest.get("meta"):
        raise DamagedCheckpoint(f"{path}: checksum mismatch in its non-tensor fields")


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read or fails its checksums (internal: callers
    turn it into a fallback to the previous checkpoint or a :class:`DataError`)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------- save / load
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_checkpoint(payload: dict[str, Any]) -> bytes:
    """``payload`` plus its version tag and integrity manifest, as ``torch.save`` bytes."""
    body = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    body["manifest"] = _manifest(body)
    buf = io.BytesIO()
    torch.save(body, buf)
    return buf.getvalue()


def save_checkpoint(run_dir: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as the newest checkpoint of ``run_dir``; keep the previous one.

    ``payload`` must hold only tensors, numbers, strings, ``None`` and lists/dicts of them.
    Returns the path written. Raises :class:`DataError` if the file read back differs
    from what was written (the previous checkpoint is kept).
    """
    run_dir = Path(run_dir)
    data = encode_checkpoint(payload)
    newest, prev = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_CHECKPOINT_NAME
    if newest.is_file():  # verified when written or when resumed from; kept until the new
        os.replace(newest, prev)  # one is verified
    atomic_write(newest, data)
    if file_sha256(newest) != hashlib.sha256(data).hexdigest():
        newest.unlink(missing_ok=True)
        raise DataError(f"checkpoint {newest} read back differently than written (disk error?)")
    return newest


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The payload of one checkpoint file, loaded weights-only and checked against its
    manifest; raises :class:`DamagedCheckpoint`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or a pickle that is not weights-only
        raise DamagedCheckpoint(f"{path} cannot be loaded safely ({first_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise DamagedCheckpoint(f"{path} is not a moescale checkpoint (a {type(ckpt).__name__})")
    version = ckpt.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise DamagedCheckpoint(
            f"'checkpoint_version' of {path} must be {CHECKPOINT_VERSION}; got {version!r}"
        )
    _verify_manifest(ckpt, path)
    return ckpt


def verify_checkpoint(
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    *,
    n_steps: int | None = None,
    world_size: int | None = None,
) -> None:
    """Consistency of a verified checkpoint with the run about to resume from it.

    Raises :class:`DataError` if ``run_key`` is missing, if ``step`` is not in
    ``[1, n_steps)`` (checkpoints are written only between steps), if the loss history
    does not have ``step`` entries, or if it was written by another number of ranks.
    """
    if not isinstance(ckpt.get("run_key"), dict):
        raise DataError(f"checkpoint {path} has no 'run_key'; delete it to restart the run")
    step = ckpt.get("step")
    high = n_steps if n_steps is not None else float("inf")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step < high:
        raise DataError(
            f"'step' of checkpoint {path} must be an int in [1, {high}) (the run's plan); "
            f"got {step!r}; delete it to restart the run"
        )
    losses = ckpt.get("step_losses")
    if not isinstance(losses, list) or len(losses) != step:
        n = len(losses) if isinstance(losses, list) else losses
        raise DataError(f"checkpoint {path} holds {n} step losses for step {step}")
    saved_ws = ckpt.get("world_size")
    if world_size is not None and saved_ws != world_size:
        raise ConfigError(
            f"checkpoint {path} was written by {saved_ws} ranks, this run has {world_size}; "
            "a full-state checkpoint resumes only on the same number of ranks "
            "(FSDP2 sharded checkpoints reshard)"
        )


def load_checkpoint(
    run_dir: str | os.PathLike,
    *,
    n_steps: int | None = None,
    world_size: int | None = None,
    quarantine: bool = True,
) -> dict[str, Any] | None:
    """The newest checkpoint of ``run_dir`` that loads safely and passes its checksums.

    Falls back to ``checkpoint.prev.pt`` (with a warning) when the newest is damaged; the
    damaged file is then renamed ``checkpoint.damaged.pt`` (if ``quarantine``: the rank
    that writes) so the next save cannot rotate it over the good one. Raises
    :class:`DataError` when every checkpoint present is damaged; ``None`` when there is
    none. The result is then checked by :func:`verify_checkpoint`.
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        path = run_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            raise DataError(f"checkpoint {path} must be a regular file (not a link or folder)")
        try:
            ckpt = read_checkpoint_file(path)
        except DamagedCheckpoint as exc:
            problems.append(str(exc))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from the previous checkpoint {path}",
                          stacklevel=2)
            if quarantine and (run_dir / CHECKPOINT_NAME).is_file():
                os.replace(run_dir / CHECKPOINT_NAME, run_dir / DAMAGED_CHECKPOINT_NAME)
        verify_checkpoint(ckpt, path, n_steps=n_steps, world_size=world_size)
        return ckpt
    if problems:
        raise DataError(f"damaged checkpoint: {'; '.join(problems)}; delete it to restart")
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete every checkpoint generation, file or sharded folder (a finished run needs none)."""
    for p in Path(run_dir).glob("checkpoint.*"):
        if p.name.endswith((".pt", ".dcp")):
            _remove(p)


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files (and sharded-checkpoint folders) that a killed
    :func:`atomic_write` or sharded save left in ``run_dir``.

    Call only while holding the run folder (no other writer). Returns the paths removed.
    """
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        _remove(p)
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------- final weights
def save_weights(run_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """Write the final weights as ``model.pt`` and ``model.safetensors`` (moescale key names).

    Tensors that share memory (a tied embedding/head) are stored once per key in the
    safetensors file, which does not allow aliasing.
    """
    from safetensors.torch import save as st_save

    run_dir = Path(run_dir)
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    atomic_write(run_dir / MODEL_NAME, buf.getvalue())
    seen: set[int] = set()
    flat = {}
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        flat[k] = v.contiguous().clone() if ptr in seen else v.contiguous()
        seen.add(ptr)
    atomic_write(run_dir / SAFETENSORS_NAME,
                 st_save(flat, metadata={"format": "pt", "producer": "moescale"}))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``model.pt`` (``weights_only=True``) or ``model.safetensors``.

    Raises :class:`DataError` for a file that cannot be loaded safely.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot load weights {path} safely ({first_line(exc)})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path} is not a state dict of tensors")
    return sd
