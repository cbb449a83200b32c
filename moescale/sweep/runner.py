"""What a worker does with one run: lock its folder, train (or resume), report.

:func:`execute_payload` is the picklable entry point that every backend (inline, the
local process pool, Ray tasks) calls. It never raises: a failing run comes back as
``{"status": "failed", "error": ...}`` so the driver records it. The run's working
folder (``STORE.runs/<key>/``) holds the trainer's checkpoints, so calling it again
on an interrupted run resumes it and on a finished run returns the stored result.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["execute_payload", "train_run", "read_curve", "worker_init"]

RunFn = Callable[[dict[str, Any]], dict[str, Any]]
RESULT_NAME = "result.json"
"""The trainer's finished-run record (:data:`moescale.train.trainer.RESULT_NAME`; not
imported from there so the driver never imports torch)."""


def worker_init() -> None:
    """Process-pool / Ray-task initializer: die with the driver (Linux ``PR_SET_PDEATHSIG``).

    Cores, GPUs and torch threads are set per run by
    :func:`moescale.sweep.launch.run_placed` (a worker may carry runs of different sizes).
    """
    with contextlib.suppress(Exception):  # PR_SET_PDEATHSIG = 1: SIGKILL us if the driver dies
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def read_curve(out_dir: Path) -> list[dict[str, Any]]:
    """Loss curve of a run folder from the trainer's ``metrics.jsonl`` (train and eval
    points merged per step: ``step``, ``tokens``, ``flops``, ``loss``, ``val_loss``)."""
    path = out_dir / "metrics.jsonl"
    points: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a torn last line after a kill
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        p = points.setdefault(int(rec["step"]), {"step": int(rec["step"])})
        for src, dst in (("tokens", "tokens"), ("flops", "flops"), ("compute", "flops"),
                         ("loss", "loss"), ("train_loss", "loss"), ("val_loss", "val_loss")):
            if rec.get(src) is not None:
                p[dst] = rec[src]
    return [points[k] for k in sorted(points)]


def train_run(payload: dict[str, Any]) -> dict[str, Any]:
    """Train one planned run with :func:`moescale.train.train` (resumes from its folder)."""
    from moescale.spec.model_spec import ModelSpec
    from moescale.train.config import TrainConfig
    from moescale.train.trainer import train

    spec = ModelSpec.from_dict(payload["spec"])
    config = TrainConfig.from_dict(payload["config"])
    out_dir = Path(payload["out_dir"])
    result = train(spec, config, out_dir)
    curve = result.get("curve") if isinstance(result.get("curve"), list) else None
    return {"result": result, "curve": curve if curve is not None else read_curve(out_dir)}


def execute_payload(payload: dict[str, Any], run_fn: RunFn | None = None) -> dict[str, Any]:
    """Run ``run_fn(payload)`` (default :func:`train_run`) under the run folder's lock.

    Returns ``{"key", "status": "done"|"failed", "result", "curve", "error",
    "wall_seconds"}``; never raises for a failing run.
    """
    run_fn = run_fn or train_run
    out_dir = Path(payload["out_dir"])
    t0 = time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with _locked(out_dir / ".lock"):
            # A result already in the folder means this call trains nothing (a store
            # rebuilt from its runs folder, or a run another driver finished).
            reused = (out_dir / RESULT_NAME).is_file()
            out = run_fn(payload)
        result = out.get("result", {}) if isinstance(out, dict) else {}
        status = str(result.get("status", "done")) if isinstance(result, dict) else "done"
        if status not in ("done", "finished", "ok", "completed"):
            err = result.get("error") or f"trainer reported status {status!r}"
            return {"key": payload["key"], "status": "failed", "error": str(err),
                    "result": result, "curve": out.get("curve"),
                    "wall_seconds": time.perf_counter() - t0}
        return {"key": payload["key"], "status": "done", "result": result, "reused": reused,
                "curve": out.get("curve") or [], "error": None,
                "wall_seconds": _wall(result, time.perf_counter() - t0)}
    except BaseException as exc:  # noqa: BLE001 - a run's failure must be recorded, not raised
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.format_exc(limit=6)
        return {"key": payload["key"], "status": "failed",
                "error": f"{type(exc).__name__}: {exc}\n{tb}", "result": None, "curve": None,
                "wall_seconds": time.perf_counter() - t0}


def _wall(result: dict[str, Any], measured: float) -> float:
    """Training seconds: the trainer's own count (summed over resumes) when it gives one."""
    for key in ("wall_time_s", "train_seconds", "wall_seconds"):
        v = result.get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return measured


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive ``flock`` on ``path``: two processes never train one run folder at once."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
