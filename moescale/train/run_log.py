"""Run outputs while training: ``metrics.jsonl``, TensorBoard events, a progress bar.

``metrics.jsonl`` holds only quantities that are a deterministic function of the
run (step, tokens, FLOPs, learning rate, losses, routing statistics), never wall
times, so an interrupted-and-resumed run writes a byte-identical file. Timing
goes to TensorBoard, the progress bar and ``result.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from moescale.errors import DataError

__all__ = ["MetricsLog", "ProgressBar", "tensorboard_writer"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only JSON-lines file that knows how many lines it holds.

    On resume, :meth:`truncate` cuts the file back to the line count stored in the
    checkpoint, dropping lines written after it (they will be written again, identically).
    """

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.lines = 0
        self._fh = None

    def truncate(self, n_lines: int) -> None:
        """Keep the first ``n_lines`` lines (the file must hold at least that many)."""
        if not self.enabled:
            self.lines = n_lines
            return
        kept: list[bytes] = []
        if self.path.exists() or self.path.is_symlink():
            with os.fdopen(self._fd(os.O_RDONLY), "rb") as fh:
                for i, line in enumerate(fh):
                    if i >= n_lines:
                        break
                    if not line.endswith(b"\n"):  # a torn last line is not a line
                        break
                    kept.append(line)
        if len(kept) < n_lines:
            raise DataError(
                f"{self.path} holds {len(kept)} complete lines, the checkpoint expects "
                f"{n_lines}; delete the run folder to retrain"
            )
        with os.fdopen(self._fd(os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        self.lines = n_lines

    def _fd(self, flags: int) -> int:
        """Open without following a symbolic link: a link planted as ``metrics.jsonl``
        must never truncate or extend its target."""
        try:
            return os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            if self.path.is_symlink():
                raise DataError(f"{self.path} is a symbolic link; refusing to write through "
                                "it (replace it with a regular file)") from None
            raise DataError(f"cannot open {self.path}: {exc.strerror}") from None

    def open(self) -> None:
        if self.enabled and self._fh is None:
            fd = self._fd(os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.lines += 1
        if not self.enabled:
            return
        self.open()
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()

    def sync(self) -> None:
        """fsync, so a checkpoint never records more lines than are on disk."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def tensorboard_writer(log_dir: str | os.PathLike, purge_step: int | None):
    """A ``SummaryWriter`` that drops events at or after ``purge_step`` (re-done on resume);
    ``None`` without the ``[tensorboard]`` extra (``metrics.jsonl`` holds the same scalars)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "tensorboard":
            raise
        return None

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class ProgressBar:
    """A rich progress bar on stderr (tokens/s, MFU, loss, ETA) — only when stderr is a TTY."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, info=""
        )
        self._progress.start()

    def update(self, step: int, *, loss: float, tokens_per_s: float, mfu: float) -> None:
        if self._progress is None:
            return
        info = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  MFU {mfu:.1%}"
        self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
