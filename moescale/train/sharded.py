"""Sharded checkpoints for FSDP2 with ``torch.distributed.checkpoint`` (DCP): every rank
writes its own shards, and a checkpoint loads into any number of ranks (resharding).

A sharded checkpoint is a folder, ``checkpoint.dcp/`` (newest) and ``checkpoint.prev.dcp/``:

- DCP's files: one ``__<rank>_0.distcp`` per rank and the ``.metadata`` index, holding only
  tensors (model parameters as DTensors, AdamW's per-parameter state);
- ``meta.pt``: everything else (run key, step, RNG, loss history, optimizer hyperparameters)
  in the weights-only, checksummed format of :mod:`moescale.train.checkpoint`, plus the
  SHA-256 of every DCP file.

A save writes into a temporary folder, then rank 0 hashes the files, writes ``meta.pt`` and
renames the folders (newest → previous, temporary → newest). Loading verifies ``meta.pt``
and every file's checksum first, reads ``.metadata`` with an unpickler that admits only
DCP's metadata classes (DCP itself uses plain ``pickle``), and refuses non-tensor items
(DCP would unpickle them with ``torch.load`` unrestricted).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moescale.errors import ConfigError, DataError
from moescale.spec.io import atomic_write
from moescale.train import checkpoint as ck
from moescale.train import parallel

__all__ = ["SHARDED_NAME", "PREVIOUS_SHARDED_NAME", "save_sharded", "load_sharded"]

SHARDED_NAME = "checkpoint.dcp"
PREVIOUS_SHARDED_NAME = "checkpoint.prev.dcp"
DAMAGED_SHARDED_NAME = "checkpoint.damaged.dcp"
META_NAME = "meta.pt"

_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "BytesStorageMetadata", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata dataclasses, ``torch.Size`` and dtypes; nothing callable else."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / ".metadata", "rb") as fh:
                metadata = _MetadataUnpickler(fh).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            raise DataError(
                f"sharded checkpoint item {read_item.dest_index.fqn!r} is not a tensor; "
                "moescale's sharded checkpoints hold tensors only"
            )

    return TensorsOnlyPlanner()


def _state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: ck.file_sha256(p) for p in sorted(folder.iterdir()) if p.name != META_NAME}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_sharded(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer,
    payload: dict[str, Any],
    ctx: parallel.DistContext,
) -> None:
    """Collective: write the sharded model/optimizer state and ``payload`` (the non-tensor
    run state, as for :func:`~moescale.train.checkpoint.save_checkpoint`) as the newest
    sharded checkpoint of ``run_dir``, keeping the previous one."""
    import torch.distributed.checkpoint as dcp

    run_dir = Path(run_dir)
    tmp = run_dir / f".{SHARDED_NAME}.step{int(payload['step'])}.tmp"
    if ctx.is_main and tmp.exists():
        shutil.rmtree(tmp)
    parallel.barrier(ctx)
    msd, osd = _state(model, optimizer)
    dcp.save({"model": msd, "optimizer": osd["state"]},
             storage_writer=dcp.FileSystemWriter(tmp))
    if ctx.is_main:
        meta = {**payload, "param_groups": osd["param_groups"], "files": _file_hashes(tmp)}
        atomic_write(tmp / META_NAME, ck.encode_checkpoint(meta))
        newest, prev = run_dir / SHARDED_NAME, run_dir / PREVIOUS_SHARDED_NAME
        if newest.is_dir():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(newest, prev)
        os.replace(tmp, newest)
        _fsync_dir(run_dir)
    parallel.barrier(ctx)


def _verified_meta(folder: Path) -> dict[str, Any]:
    """``meta.pt`` of ``folder`` after checking it and every DCP file against its hashes."""
    if folder.is_symlink() or not folder.is_dir():
        raise ck.DamagedCheckpoint(f"{folder} is not a folder")
    meta = ck.read_checkpoint_file(folder / META_NAME)
    files = meta.get("files")
    if not isinstance(files, dict) or ".metadata" not in files:
        raise ck.DamagedCheckpoint(f"{folder / META_NAME} lists no DCP files")
    present = {p.name for p in folder.iterdir() if p.name != META_NAME}
    if present != set(files):
        raise ck.DamagedCheckpoint(f"{folder}: files differ from its manifest")
    got = _file_hashes(folder)
    for name, digest in files.items():
        if got[name] != digest:
            raise ck.DamagedCheckpoint(f"{folder}: checksum mismatch in {name}")
    return meta


def _choose(run_dir: Path) -> tuple[str | None, str | None, list[str]]:
    """(folder name, error, warnings) of the newest sharded checkpoint that verifies."""
    problems: list[str] = []
    for name in (SHARDED_NAME, PREVIOUS_SHARDED_NAME):
        path = run_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        try:
            _verified_meta(path)
        except ck.DamagedCheckpoint as exc:
            problems.append(str(exc))
            continue
        return name, None, problems
    if problems:
        return None, f"damaged checkpoint: {'; '.join(problems)}; delete it to restart", problems
    return None, None, problems


def load_sharded(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer,
    ctx: parallel.DistContext,
    *,
    n_steps: int | None = None,
    batch_tokens: int | None = None,
) -> dict[str, Any] | None:
    """Collective: load the newest verified sharded checkpoint of ``run_dir`` into ``model``
    and ``optimizer`` (sharded or not, on any number of ranks); return its run state, or
    ``None`` when there is none. Raises :class:`DataError` for a damaged checkpoint with no
    good previous one, and as :func:`~moescale.train.checkpoint.verify_checkpoint` does.
    """
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    run_dir = Path(run_dir)
    choice = _choose(run_dir) if ctx.is_main else (None, None, [])
    name, error = parallel.broadcast_object(choice[:2], ctx)
    if error is not None:
        raise DataError(error)
    if name is None:
        return None
    if choice[2]:  # rank 0: the newest is damaged; keep it out of the next rotation
        warnings.warn(f"{choice[2][0]}; resuming from the previous checkpoint {name}",
                      stacklevel=2)
        damaged = run_dir / DAMAGED_SHARDED_NAME
        if damaged.exists():
            shutil.rmtree(damaged)
        if (run_dir / SHARDED_NAME).is_dir():
            os.replace(run_dir / SHARDED_NAME, damaged)
    parallel.barrier(ctx)
    folder = run_dir / name
    meta = ck.read_checkpoint_file(folder / META_NAME)
    ck.verify_checkpoint(meta, folder, n_steps=n_steps)
    if batch_tokens is not None and meta.get("batch_tokens") != batch_tokens:
        raise ConfigError(
            f"checkpoint {folder} was written with a batch of {meta.get('batch_tokens')} "
            f"tokens, this run's plan has {batch_tokens}; resume with the same batch"
        )
    msd, osd = _state(model, optimizer)
    state = {"model": msd, "optimizer": osd["state"]}
    try:  # the index first, outside DCP (which logs tracebacks for a failed read)
        with open(folder / ".metadata", "rb") as fh:
            _MetadataUnpickler(fh).load()
    except Exception as exc:
        raise DataError(
            f"cannot load sharded checkpoint {folder} safely ({ck.first_line(exc)})"
        ) from None
    try:
        dcp.load(state, storage_reader=_reader(folder), planner=_planner())
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        text = " ".join(str(exc).split())
        reason = "an item is not a tensor" if "is not a tensor" in text else text[:200]
        raise DataError(f"cannot load sharded checkpoint {folder} safely ({reason})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict={"state": state["optimizer"],
                                     "param_groups": meta["param_groups"]})
    return meta
