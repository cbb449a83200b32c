"""Start one sweep run on the devices it was given, in one process or under torchrun.

:func:`run_placed` is what a local-pool worker or a Ray task executes: it pins the
process to the run's cores, sets ``CUDA_VISIBLE_DEVICES`` to the run's GPUs (the local
pool's assignment; on Ray, Ray's own), then trains through
:func:`moescale.sweep.runner.execute_payload`. A run with ``nproc`` > 1 is launched as

    python -m torch.distributed.run --standalone --nproc-per-node N \
        -m moescale.sweep.launch RUN_DIR.launch/payload.json

(every rank calls the same ``train`` as a single-process run; ``moescale train`` under
torchrun is the same code path, but a sweep payload carries the exact
``TrainConfig`` that keys the run, so it is handed over as JSON rather than re-parsed
from a TOML file). Rank 0 writes the run's return value next to the payload; the task
reads it back, so results reach the driver (and the store) the same way as in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from moescale.sweep.runner import RunFn, execute_payload, train_run
from moescale.train.resources import RUNS_PER_GPU_ENV

__all__ = ["run_placed", "torchrun_command", "launch_dir", "PAYLOAD_NAME", "RETURN_NAME",
           "LOG_NAME"]

PAYLOAD_NAME = "payload.json"
RETURN_NAME = "return.json"
LOG_NAME = "torchrun.log"


def launch_dir(out_dir: str | os.PathLike) -> Path:
    """``RUN_DIR.launch/``: the torchrun payload, rank 0's return value and torchrun's log.
    Beside the run folder, not in it: the trainer accepts only its own files there."""
    out = Path(out_dir)
    return out.with_name(out.name + ".launch")


def torchrun_command(nproc: int, payload_file: str | os.PathLike) -> list[str]:
    """The torchrun command line of a run with ``nproc`` processes on one machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", "moescale.sweep.launch", str(payload_file)]


def _fn_name(fn: RunFn | None) -> str | None:
    if fn is None:
        return None
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name:
        raise ValueError(f"a run_fn launched under torchrun must be a module-level function; "
                         f"got {name}")
    return name


def _load_fn(name: str | None) -> RunFn:
    if not name:
        return train_run
    module, _, qual = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _torchrun(payload: dict[str, Any], nproc: int, run_fn: RunFn | None) -> dict[str, Any]:
    """Run ``payload`` under torchrun with ``nproc`` ranks; return rank 0's return value."""
    from moescale.spec.io import atomic_write

    out = launch_dir(payload["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / RETURN_NAME).unlink(missing_ok=True)
    payload_file = out / PAYLOAD_NAME
    atomic_write(payload_file, json.dumps({**payload, "run_fn": _fn_name(run_fn)}) + "\n")
    cmd = torchrun_command(nproc, payload_file)
    with open(out / LOG_NAME, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
                            ).returncode
    ret = out / RETURN_NAME
    if rc != 0 or not ret.is_file():
        raise RuntimeError(f"torchrun with {nproc} processes exited with code {rc}: "
                           f"{_first_error(out / LOG_NAME)} (log: {out / LOG_NAME})")
    return json.loads(ret.read_text())


def _first_error(log: Path) -> str:
    """The first exception line a rank printed (``ConfigError: ...``), else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^[\w.]+(Error|Exception)\b.*:", ln) and "elastic" not in ln:
            return ln
    return lines[-1] if lines else "no output"


def run_placed(payload: dict[str, Any], run_fn: RunFn | None,
               placement: dict[str, Any]) -> dict[str, Any]:
    """Train ``payload`` on ``placement`` and report like :func:`execute_payload`.

    ``placement``: ``cores`` (CPU ids to pin to, or ``None``), ``cuda_visible_devices``
    (a string, or ``None`` to keep the environment's, e.g. Ray's), ``threads`` (torch
    threads per process), ``nproc`` (> 1: torchrun), ``runs_per_gpu`` (runs that may share
    its GPU). The run's result gains ``placement``: where it actually ran (host, cores,
    ``CUDA_VISIBLE_DEVICES``, nproc, runs_per_gpu).
    """
    cores = placement.get("cores")
    if cores and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)
    if placement.get("cuda_visible_devices") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = placement["cuda_visible_devices"]
    share = int(placement.get("runs_per_gpu") or 1)
    os.environ[RUNS_PER_GPU_ENV] = str(share)  # the trainer's GPU micro-batch leaves room
    nproc = int(placement.get("nproc") or 1)
    threads = int(placement.get("threads") or 1)
    per_rank = max(1, threads // nproc)
    os.environ["OMP_NUM_THREADS"] = str(per_rank)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(per_rank)
    fn = run_fn
    if nproc > 1:
        def fn(p: dict[str, Any]) -> dict[str, Any]:
            return _torchrun(p, nproc, run_fn)
    res = execute_payload(payload, fn)
    if isinstance(res.get("result"), dict):  # kept with the run's record in the store
        res["result"]["placement"] = {
            "host": socket.gethostname(), "nproc": nproc, "threads": threads,
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "runs_per_gpu": share,
        }
    return res


def main(argv: list[str] | None = None) -> int:
    """torchrun entry: every rank runs the payload's run function; rank 0 writes its
    return value (:data:`RETURN_NAME`) for the launching task."""
    from moescale.spec.io import atomic_write

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m moescale.sweep.launch PAYLOAD.json", file=sys.stderr)
        return 2
    payload = json.loads(Path(args[0]).read_text())
    out = _load_fn(payload.pop("run_fn", None))(payload)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write(launch_dir(payload["out_dir"]) / RETURN_NAME, json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
