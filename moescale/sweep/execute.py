"""Run a planned sweep, idempotently, on a local process pool or a Ray cluster.

The driver (this process) is the only writer of the store. For every distinct run
key that is not ``done`` (and not ``failed``, unless ``retry_failed``) it submits
:func:`moescale.sweep.runner.execute_payload` to a backend, at most ``workers`` at a
time, and records each outcome in one transaction. Killing the driver at any moment
loses nothing: finished runs are in the store; a run that was in flight is still
``running`` there and its folder holds the trainer's last checkpoint, so the next
``run_sweep`` resumes it.

Executors (:data:`EXECUTORS`, the ``backend`` argument): ``local`` —
``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` context; each run gets its
own cores and GPUs from a :class:`~moescale.sweep.resources.DevicePool` (CPU affinity,
``CUDA_VISIBLE_DEVICES``);
``ray`` — one task per run requesting the run's ``num_cpus`` / ``num_gpus`` on
``ray.init(address=...)`` or a local instance; ``inline`` — in this process (debugging,
tests). A run's resources come from the config's ``[resources]`` table
(:mod:`moescale.sweep.resources`); a run with ``nproc`` > 1 is launched with torchrun
(:mod:`moescale.sweep.launch`). A request larger than one machine of the backend is
refused before anything runs.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moescale.errors import ConfigError
from moescale.sweep.config import SweepConfig
from moescale.sweep.launch import run_placed
from moescale.sweep.planner import PlannedRun, SweepPlan, plan_sweep
from moescale.sweep.resources import (
    DevicePool,
    ResourceConfig,
    RunResources,
    check_fits,
    local_gpu_count,
    resolve_resources,
)
from moescale.sweep.runner import RunFn, execute_payload, worker_init
from moescale.sweep.store import RunStore

__all__ = ["SweepOutcome", "run_sweep", "run_adaptive", "check_backend", "default_workers",
           "EXECUTORS", "RAY_INSTALL"]

EXECUTORS = ("local", "ray", "inline")
"""Where runs execute (not to be confused with the MoE dispatch back-ends of the model)."""
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
    resources: ResourceConfig | None = None,
    gpus: int | None = None,
) -> SweepOutcome:
    """Train every run of ``plan`` not yet done in ``store``.

    Parameters
    ----------
    backend : {"local", "ray", "inline"}
        The executor (:data:`EXECUTORS`).
    workers : int, optional
        Concurrent runs (>= 1); default :func:`default_workers`. Each local worker gets
        ``cores // workers`` torch threads (``workers = cores``: one single-thread run
        per core, fastest for small models).
    ray_address : str, optional
        Ray cluster address (``host:port`` or ``ray://host:port``); ``None`` starts a
        local instance.
    retry_failed : bool
        Also re-run runs the store records as failed (default: report them, skip them).
    run_fn : callable, optional
        ``payload -> {"result", "curve"}``; default trains with :mod:`moescale.train`.
        Must be picklable (module level) for the process and Ray backends.
    resources : ResourceConfig, optional
        Per-run GPUs, cores and processes; default the config's ``[resources]``
        (``plan.sweep.resources``).
    gpus : int, optional
        GPUs the local pool hands out (default: :func:`local_gpu_count`); ignored on Ray,
        whose cluster says what it has.
    """
    cores = os.cpu_count() or 1
    ray_cap = workers if backend == "ray" else None  # Ray queues by resources itself
    workers = check_backend(backend, workers, cores)
    if resources is None:
        resources = plan.sweep.resources
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    out = SweepOutcome()
    with store.driver_lock():
        _drive(plan, store, backend, workers, cores, ray_address, retry_failed, run_fn, say,
               out, resources, gpus, ray_cap)
    out.wall_seconds = time.perf_counter() - t0
    return out


def check_backend(backend: str, workers: int | None, cores: int | None = None) -> int:
    """Validate ``backend`` and ``workers`` (before any store is created); return the
    worker count (default :func:`default_workers`)."""
    if backend not in EXECUTORS:
        raise ConfigError(f"'backend' must be one of {', '.join(EXECUTORS)}; got {backend!r}")
    if workers is None:
        return default_workers(cores)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 4096:
        raise ConfigError(f"'workers' must be an int in [1, 4096]; got {workers!r}")
    return workers


def _drive(plan, store, backend, workers, cores, ray_address, retry_failed, run_fn, say,
           out: SweepOutcome, resources, gpus, ray_cap) -> None:
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
        gpus = local_gpu_count() if gpus is None else gpus
        needs = _resolve(todo, resources, threads, gpus, cores, "this machine")
        for p in payloads:
            store.mark_running(p["key"])
            say(f"start {p['name']}")
            res = needs[p["key"]]
            record(run_placed(p, run_fn, {"nproc": res.nproc, "threads": res.cpus})
                   if res.torchrun else execute_payload(p, run_fn))
    elif backend == "local":
        gpus = local_gpu_count() if gpus is None else gpus
        devices = DevicePool(_affinity(), gpus, slots=workers * threads)
        needs = _resolve(todo, resources, threads, gpus, devices.n_cores, "this machine")
        _say_sharing(needs, say)
        _run_local(payloads, store, workers, needs, devices, run_fn, record, say)
    else:
        _run_ray(payloads, store, ray_cap or len(payloads), threads, ray_address, run_fn,
                 record, say, todo, resources, workers)


def run_adaptive(
    sweep: SweepConfig,
    store: RunStore,
    *,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    run_fn: RunFn | None = None,
    throughput: float | None = None,
    progress: Progress | None = None,
    gpus: int | None = None,
) -> tuple[SweepOutcome, SweepPlan]:
    """Drive a sweep to the end: plan, train, re-plan with the results, until nothing new.

    Each round trains what :func:`~moescale.sweep.planner.plan_sweep` plans from the
    store's results so far (the learning-rate scan, then the ladders, then the rungs that
    adaptive extension adds), under one driver lock. Stops when a round trains nothing.
    The final plan's ladder states and learning-rate multipliers are kept in the store's
    meta (``ladders``, ``lr_multipliers``). Arguments as :func:`run_sweep` (resources:
    the config's ``[resources]``).

    Returns the merged outcome of every round and the final plan.
    """
    cores = os.cpu_count() or 1
    ray_cap = workers if backend == "ray" else None  # Ray queues by resources itself
    workers = check_backend(backend, workers, cores)
    say = progress or (lambda _msg: None)
    total = SweepOutcome()
    t0 = time.perf_counter()
    with store.driver_lock():
        for round_no in range(1, 10_000):
            plan = plan_sweep(sweep, results=store.results(), throughput=throughput,
                              throughput_source="measured" if throughput else None)
            if round_no > 1:
                say(f"round {round_no}: re-planned from the results ({len(plan.runs)} runs)")
            out = SweepOutcome()
            _drive(plan, store, backend, workers, cores, ray_address, retry_failed, run_fn,
                   say, out, sweep.resources, gpus, ray_cap)
            total.completed += out.completed
            total.recovered += out.recovered
            total.failed.update(out.failed)
            if round_no == 1:
                total.skipped = list(out.skipped)
            if not out.completed and not out.recovered:
                break
        store.set_meta("ladders", [s.to_dict() for s in plan.ladders])
        store.set_meta("lr_multipliers", dict(plan.lr_multipliers))
    total.wall_seconds = time.perf_counter() - t0
    return total, plan


def _affinity() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _resolve(todo: list[PlannedRun], resources: ResourceConfig, threads: int, gpus: int,
             cpus: int, where: str) -> dict[str, RunResources]:
    """Every run's resources, each checked against one machine of the backend (before any
    run starts, so an oversize request loses nothing)."""
    needs: dict[str, RunResources] = {}
    for run in todo:
        res = resolve_resources(resources.for_family(run.family), device=run.config.device,
                                default_cpus=threads, gpu_count=gpus)
        check_fits(run.name, res, gpus=gpus, cpus=max(cpus, threads), where=where)
        needs[run.key] = res
    return needs


def _say_sharing(needs: dict[str, RunResources], say: Progress) -> None:
    """Say what sharing a GPU between runs costs when no NVIDIA MPS daemon is announced."""
    shared = max((r.share for r in needs.values() if r.gpus), default=1)
    if shared > 1 and not os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        say(f"note: up to {shared} runs share each GPU (resources.runs_per_gpu) as separate "
            "processes, which the GPU time-slices without NVIDIA MPS; measure a few runs "
            "shared and alone before a long sweep (docs/sweeps.md)")


def _run_local(payloads, store, workers, needs, devices, run_fn, record, say) -> None:
    """Process pool: at most ``workers`` runs at once, each holding its own cores and GPUs
    from ``devices`` (a queued run that does not fit yet waits; a smaller one behind it
    may start first). With GPUs every run gets a fresh process, since CUDA fixes a
    process's devices when it starts."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    queue = list(payloads)
    ctx = mp.get_context("spawn")
    fresh = any(needs[p["key"]].gpus for p in payloads)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=worker_init,
                                   max_tasks_per_child=1 if fresh else None)

    def start(p: dict[str, Any]) -> bool:
        res = needs[p["key"]]
        slot = devices.take(res)
        if slot is None:
            return False
        store.mark_running(p["key"])
        gpu_note = f" on GPU {slot.cuda_visible_devices(visible)}" if slot.gpus else ""
        if slot.gpus and res.share > 1:
            gpu_note += f" (shared by up to {res.share} runs)"
        say(f"start {p['name']}{gpu_note}")
        placement = {"cores": list(slot.cores), "threads": res.cpus, "nproc": res.nproc,
                     "cuda_visible_devices": slot.cuda_visible_devices(visible),
                     "runs_per_gpu": res.share}
        running[pool.submit(run_placed, p, run_fn, placement)] = (p, slot)
        return True

    pool = new_pool()
    running: dict[Any, tuple[dict[str, Any], Any]] = {}
    try:
        while queue or running:
            i = 0
            while i < len(queue) and len(running) < workers:
                if start(queue[i]):
                    queue.pop(i)
                else:
                    i += 1
            if not running:  # pragma: no cover - _resolve checked every run fits alone
                raise ConfigError(f"run {queue[0]['name']!r} does not fit this machine")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                p, slot = running.pop(fut)
                devices.give(slot)
                try:
                    record(fut.result())
                except BrokenProcessPool as exc:
                    broken = True
                    record({"key": p["key"], "status": "failed",
                            "error": f"worker process died (BrokenProcessPool: {exc})"})
            if broken:  # every in-flight run of a broken pool is lost: re-queue them
                for fut, (p, slot) in list(running.items()):
                    fut.cancel()
                    devices.give(slot)
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


_TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _token_source() -> str | None:
    """Where Ray will find an authentication token: an environment variable, the default
    token file, or ``None``."""
    for var in _TOKEN_VARS:
        if os.environ.get(var):
            return var
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return default if os.path.isfile(default) else None


def _join_ray(ray, address: str | None, num_cpus: int) -> None:
    """``ray.init`` with the cause of a failure in one line (token authentication, the
    default of current Ray clusters, fails as a bare "Failed to connect" otherwise)."""
    if address and os.environ.get("RAY_AUTH_MODE") is None and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"  # a token was given: use it
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types; all are one line here
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if address and "auth" in f"{type(exc).__name__} {msg}".lower():
            hint = ("Ray token authentication is on but no token was found: set RAY_AUTH_TOKEN "
                    "(or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on "
                    "the head node)")
        elif address and _token_source() is None:
            hint = ("no Ray authentication token is set; a cluster with token authentication "
                    "(Ray's default) refuses such drivers: set RAY_AUTH_TOKEN or "
                    "RAY_AUTH_TOKEN_PATH to the cluster's token (`ray get-auth-token` on the "
                    "head node)")
        elif address:
            hint = (f"a token is set ({_token_source()}): check that it is the "
                    "cluster's token and that the address is the head node's GCS port")
        else:
            hint = "could not start a local Ray instance"
        raise ConfigError(f"cannot join Ray at {address or 'a new local instance'!r}: {msg}; "
                          f"{hint}") from None


def _cluster_capacity(ray) -> tuple[int, int, list[dict[str, Any]]]:
    """The most GPUs and CPUs one alive node of the cluster has, and the alive nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = max((int(n.get("Resources", {}).get("GPU", 0)) for n in nodes), default=0)
    cpus = max((int(n.get("Resources", {}).get("CPU", 0)) for n in nodes), default=0)
    return gpus, cpus, nodes


def _check_shared_runs(ray, runs_dir, nodes: list[dict[str, Any]]) -> None:
    """Refuse a cluster where some node cannot see or write the store's runs folder.

    Run folders hold each run's checkpoints (resume) and final weights, so every node
    must reach the driver's runs folder through a shared filesystem. The driver writes a
    marker file; one zero-CPU task pinned to each alive node reads it back and writes a
    probe file beside it.
    """
    import uuid

    from moescale.spec.io import atomic_write

    token = uuid.uuid4().hex
    marker = runs_dir / f".shared-probe-{token}"
    atomic_write(marker, token)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(_probe_runs_folder)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id=n["NodeID"], soft=False)).remote(str(marker), token)
                for n in nodes]
        for node, problem in zip(nodes, ray.get(refs), strict=True):
            if problem:
                raise ConfigError(
                    f"Ray node {node.get('NodeManagerAddress', node['NodeID'])} cannot use the "
                    f"runs folder {runs_dir}: {problem}; every node must see the store's runs "
                    "folder on a shared filesystem (docs/sweeps.md, multi-node)")
    finally:
        marker.unlink(missing_ok=True)


def _probe_runs_folder(marker: str, token: str) -> str | None:
    """On one node: ``None`` if the driver's marker is visible and its folder writable."""
    path = os.path.abspath(marker)
    try:
        with open(path) as fh:
            if fh.read() != token:
                return "its marker file holds another value (a different folder)"
    except OSError as exc:
        return f"the driver's marker file is not visible ({exc.strerror})"
    probe = f"{path}.{socket.gethostname()}.{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as exc:
        return f"the folder is not writable ({exc.strerror})"
    return None


def _run_ray(payloads, store, cap, threads, address, run_fn, record, say, todo, resources,
             workers) -> None:
    ray = _import_ray()
    if address:
        _probe(address)
    started_here = not ray.is_initialized()
    if started_here:
        _join_ray(ray, address, workers * threads)
    try:
        gpus, cpus, nodes = _cluster_capacity(ray)
        needs = _resolve(todo, resources, threads, gpus, cpus, "the largest Ray node")
        _say_sharing(needs, say)
        _check_shared_runs(ray, store.runs_dir, nodes)
        # a GPU run gets a fresh worker process (CUDA fixes a process's devices when it
        # starts; Ray recycles GPU workers only for tasks declared with num_gpus up front)
        cpu_task = ray.remote(_ray_execute)
        gpu_task = ray.remote(max_calls=1)(_ray_execute)
        queue = list(payloads)
        running: dict[Any, dict[str, Any]] = {}
        while queue or running:
            while queue and len(running) < cap:
                p = queue.pop(0)
                res = needs[p["key"]]
                store.mark_running(p["key"])
                gpu = float(res.gpu_fraction)
                say(f"start {p['name']} (ray, {res.cpus} CPU, {gpu:g} GPU)")
                # GPUs: Ray sets CUDA_VISIBLE_DEVICES to the ones it assigned; a CPU run
                # is shown none, so "auto" cannot wander onto a GPU no task reserved
                where = {"threads": res.cpus, "nproc": res.nproc, "runs_per_gpu": res.share,
                         "cuda_visible_devices": None if res.gpus else ""}
                task = gpu_task if res.gpus else cpu_task
                ref = task.options(num_cpus=res.cpus, num_gpus=gpu).remote(
                    p, run_fn, where)
                running[ref] = p
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


def _ray_execute(payload: dict[str, Any], run_fn: RunFn | None,
                 placement: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: Ray has set ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned (empty
    for a CPU run) and sized the task's cores; train there."""
    worker_init()
    return run_placed(payload, run_fn, placement)
