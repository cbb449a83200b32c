"""Run a planned sweep, idempotently, on a local process pool or a Ray cluster.

The driver (this process) is the only writer of the store. For every distinct run
key that is not ``done`` (and not ``failed``, unless ``retry_failed``) it submits
:func:`moescale.sweep.runner.execute_payload` to a backend, at most ``workers`` at a
time, and records each outcome in one transaction. Killing the driver at any moment
loses nothing: finished runs are in the store; a run that was in flight is still
``running`` there and its folder holds the trainer's last checkpoint, so the next
``run_sweep`` resumes it.

Backends: ``local`` — ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn``
context, torch threads per worker = cores // workers; ``ray`` — one
``@ray.remote(num_cpus=...)`` task per run on ``ray.init(address=...)`` or a local
instance; ``inline`` — in this process (debugging, tests).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moescale.errors import ConfigError
from moescale.sweep.planner import PlannedRun, SweepPlan
from moescale.sweep.runner import RunFn, execute_payload, worker_init
from moescale.sweep.store import RunStore

__all__ = ["SweepOutcome", "run_sweep", "check_backend", "default_workers", "BACKENDS",
           "RAY_INSTALL"]

BACKENDS = ("local", "ray", "inline")
RAY_INSTALL = "pip install 'moescale[ray]'"

Progress = Callable[[str], None]


@dataclass
class SweepOutcome:
    """What one :func:`run_sweep` call did (names of runs)."""

    completed: list[str] = field(default_factory=list)
    """Trained (or resumed) to completion by this call."""
    skipped: list[str] = field(default_factory=list)
    """Already done in the store."""
    recovered: list[str] = field(default_factory=list)
    """Not trained by this call: a finished result already lay in the run's folder (the
    store was rebuilt from its runs folder, or the run finished outside this store)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Failed in this call, or earlier and not retried: name -> error."""
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"completed": self.completed, "skipped": self.skipped,
                "recovered": self.recovered, "failed": self.failed,
                "wall_seconds": self.wall_seconds}


def default_workers(cores: int | None = None) -> int:
    """One worker per 2 cores, at least one: each worker's torch gets 2 threads, where
    small models still scale (on a 2-core machine: 1 worker with 2 threads)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // 2)


def _payload(run: PlannedRun, store: RunStore) -> dict[str, Any]:
    return {"key": run.key, "name": run.name, "spec": run.spec.to_dict(),
            "config": run.config.to_dict(), "out_dir": str(store.run_dir(run.key))}


def run_sweep(
    plan: SweepPlan,
    store: RunStore,
    *,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    run_fn: RunFn | None = None,
    progress: Progress | None = None,
) -> SweepOutcome:
    """Train every run of ``plan`` not yet done in ``store``.

    Parameters
    ----------
    backend : {"local", "ray", "inline"}
    workers : int, optional
        Concurrent runs; default :func:`default_workers`.
    ray_address : str, optional
        Ray cluster address (``host:port`` or ``ray://host:port``); ``None`` starts a
        local instance.
    retry_failed : bool
        Also re-run runs the store records as failed (default: report them, skip them).
    run_fn : callable, optional
        ``payload -> {"result", "curve"}``; default trains with :mod:`moescale.train`.
        Must be picklable (module level) for the process and Ray backends.
    """
    cores = os.cpu_count() or 1
    workers = check_backend(backend, workers, cores)
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    out = SweepOutcome()
    with store.driver_lock():
        _drive(plan, store, backend, workers, cores, ray_address, retry_failed, run_fn, say,
               out)
    out.wall_seconds = time.perf_counter() - t0
    return out


def check_backend(backend: str, workers: int | None, cores: int | None = None) -> int:
    """Validate ``backend`` and ``workers`` (before any store is created); return the
    worker count (default :func:`default_workers`)."""
    if backend not in BACKENDS:
        raise ConfigError(f"'backend' must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if workers is None:
        return default_workers(cores)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 4096:
        raise ConfigError(f"'workers' must be an int in [1, 4096]; got {workers!r}")
    return workers


def _drive(plan, store, backend, workers, cores, ray_address, retry_failed, run_fn, say,
           out: SweepOutcome) -> None:
    store.sync_plan(plan)
    rows = {r["name"]: r for r in store.runs()}
    names_by_key: dict[str, list[str]] = {}
    todo: list[PlannedRun] = []
    for run in plan.runs:
        names_by_key.setdefault(run.key, []).append(run.name)
        status = rows[run.name]["status"]
        if status == "done":
            out.skipped.append(run.name)
        elif status == "failed" and not retry_failed:
            out.failed[run.name] = rows[run.name]["error"] or "failed"
        elif run.key not in {t.key for t in todo}:
            todo.append(run)
    say(f"{len(plan.runs)} runs: {len(out.skipped)} done, {len(out.failed)} failed earlier, "
        f"{len(todo)} to train ({backend}, {min(workers, max(1, len(todo)))} worker(s))")
    if not todo:
        return
    threads = max(1, cores // workers)
    counter = {"n": 0}

    def record(res: dict[str, Any]) -> None:
        counter["n"] += 1
        names = names_by_key[res["key"]]
        if res["status"] == "done":
            store.mark_done(res["key"], res["result"] or {}, res.get("curve"),
                            res.get("wall_seconds"))
            (out.recovered if res.get("reused") else out.completed).extend(names)
            loss = (res["result"] or {}).get("loss")
            loss_s = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "no loss"
            how = "found finished in its folder" if res.get("reused") else "done"
            say(f"[{counter['n']}/{len(todo)}] {how} {', '.join(names)}: {loss_s} "
                f"({res.get('wall_seconds') or 0:.0f} s)")
        else:
            err = str(res.get("error") or "unknown error")
            store.mark_failed(res["key"], err, res.get("wall_seconds"))
            for n in names:
                out.failed[n] = err
            say(f"[{counter['n']}/{len(todo)}] FAILED {', '.join(names)}: "
                f"{err.splitlines()[0] if err else ''}")

    payloads = [_payload(r, store) for r in todo]
    if backend == "inline":
        for p in payloads:
            store.mark_running(p["key"])
            say(f"start {p['name']}")
            record(execute_payload(p, run_fn))
    elif backend == "local":
        _run_local(payloads, store, workers, threads, run_fn, record, say)
    else:
        _run_ray(payloads, store, workers, threads, ray_address, run_fn, record, say)


def _run_local(payloads, store, workers, threads, run_fn, record, say) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    queue = list(payloads)
    ctx = mp.get_context("spawn")

    def new_pool() -> ProcessPoolExecutor:
        counter = ctx.Value("i", 0)  # worker slot -> its own cores (see worker_init)
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=worker_init, initargs=(threads, counter))

    pool = new_pool()
    running: dict[Any, dict[str, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                p = queue.pop(0)
                store.mark_running(p["key"])
                say(f"start {p['name']}")
                running[pool.submit(execute_payload, p, run_fn)] = p
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                p = running.pop(fut)
                try:
                    record(fut.result())
                except BrokenProcessPool as exc:
                    broken = True
                    record({"key": p["key"], "status": "failed",
                            "error": f"worker process died (BrokenProcessPool: {exc})"})
            if broken:  # every in-flight run of a broken pool is lost: re-queue them
                for fut, p in list(running.items()):
                    fut.cancel()
                    queue.insert(0, p)
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _probe(address: str) -> None:
    """Fail fast on an unreachable Ray address (``ray.init`` would retry for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"'ray_address' must be host:port or ray://host:port; got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray backend needs ray, which is not installed: {RAY_INSTALL}") \
            from None
    return ray


def _run_ray(payloads, store, workers, threads, address, run_fn, record, say) -> None:
    ray = _import_ray()
    if address:
        _probe(address)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot start or join Ray (address {address!r}): {exc}") from None
    task = ray.remote(num_cpus=threads)(_ray_execute)
    queue = list(payloads)
    running: dict[Any, dict[str, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                p = queue.pop(0)
                store.mark_running(p["key"])
                say(f"start {p['name']} (ray)")
                running[task.remote(p, run_fn, threads)] = p
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                p = running.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker is a failed run
                    res = {"key": p["key"], "status": "failed",
                           "error": f"ray task failed: {type(exc).__name__}: {exc}"}
                record(res)
    finally:
        if started_here:
            ray.shutdown()


def _ray_execute(payload: dict[str, Any], run_fn: RunFn | None, threads: int) -> dict[str, Any]:
    worker_init(threads)
    return execute_payload(payload, run_fn)
