"""What each sweep run needs — GPUs, CPU cores, processes — and which devices it is given.

A sweep config may carry a ``[resources]`` table (and per-family overrides)::

    [resources]
    gpus_per_run = 1        # default: 1 when the run's device is CUDA, else 0
    cpus_per_run = 2        # CPU cores per run (its torch threads, split among its ranks);
                            # default: cores // workers on the local pool
    nproc = 1               # processes per run; > 1 launches torchrun (one rank per GPU)
    runs_per_gpu = 1        # single-GPU runs that may share one GPU; default 1. They are
                            # separate processes: without NVIDIA MPS the GPU time-slices
                            # them (its cost not yet measured in isolation: docs/sweeps.md)

    [resources.family.big]  # overrides for the runs of family "big" ("dense" for [dense])
    gpus_per_run = 4

Resources are not part of a run's key: they decide where a run executes, not what it
computes (a 2-rank DDP run averages the same global batch as one process).

:class:`DevicePool` is the local pool's book of free cores and GPU indices: each run in
flight holds its own GPU set (``CUDA_VISIBLE_DEVICES``) and its own cores (CPU affinity),
so two concurrent runs never share a device unless ``runs_per_gpu`` > 1 lets up to that many
single-GPU runs share one. On Ray the same requests become the task's ``num_gpus``
(``1/runs_per_gpu`` when shared) / ``num_cpus`` and Ray assigns the devices.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from moescale.errors import ConfigError, check_range

__all__ = [
    "ResourceRequest",
    "ResourceConfig",
    "RunResources",
    "Slot",
    "DevicePool",
    "parse_resources",
    "resolve_resources",
    "check_fits",
    "local_gpu_count",
    "RESOURCE_KEYS",
]

RESOURCE_KEYS = ("gpus_per_run", "cpus_per_run", "nproc", "runs_per_gpu")
MAX_PER_RUN = 4096
"""Upper bound of every per-run count (a typo such as 1e9 GPUs is refused, not planned)."""


@dataclass(frozen=True, kw_only=True)
class ResourceRequest:
    """Per-run resources as written in the config; ``None`` = the default."""

    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    nproc: int | None = None
    runs_per_gpu: int | None = None

    def over(self, base: ResourceRequest) -> ResourceRequest:
        """This request with its unset fields taken from ``base``."""
        return ResourceRequest(**{k: getattr(self, k) if getattr(self, k) is not None
                                  else getattr(base, k) for k in RESOURCE_KEYS})


@dataclass(frozen=True, kw_only=True)
class ResourceConfig:
    """The ``[resources]`` table: a default request and per-family overrides."""

    default: ResourceRequest = field(default_factory=ResourceRequest)
    families: tuple[tuple[str, ResourceRequest], ...] = ()

    def for_family(self, family: str) -> ResourceRequest:
        """The request of the runs of ``family`` (its override over the default)."""
        return dict(self.families).get(family, ResourceRequest()).over(self.default)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in dataclasses.asdict(self.default).items()
                               if v is not None}
        fams = {name: {k: v for k, v in dataclasses.asdict(r).items() if v is not None}
                for name, r in self.families}
        if fams:
            out["family"] = fams
        return out


@dataclass(frozen=True)
class RunResources:
    """What one run is given: ``gpus`` GPUs, ``cpus`` cores, ``nproc`` processes; a
    single-GPU run with ``share`` > 1 holds ``1/share`` of its GPU (``runs_per_gpu``)."""

    gpus: int
    cpus: int
    nproc: int
    share: int = 1

    @property
    def torchrun(self) -> bool:
        """Whether the run is launched with torchrun (more than one process)."""
        return self.nproc > 1

    @property
    def gpu_fraction(self) -> Fraction:
        """The GPU capacity the run holds: ``gpus``, or ``1/share`` of one shared GPU."""
        return Fraction(self.gpus) if self.share == 1 else Fraction(self.gpus, self.share)

    def to_dict(self) -> dict[str, int]:
        return {"gpus": self.gpus, "cpus": self.cpus, "nproc": self.nproc,
                "runs_per_gpu": self.share}


def _parse_request(table: Any, where: str) -> ResourceRequest:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table; got {table!r}")
    unknown = sorted(set(table) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                          f"allowed: {', '.join(RESOURCE_KEYS)}")
    kw: dict[str, int] = {}
    for key in RESOURCE_KEYS:
        if key in table:
            low = 0 if key == "gpus_per_run" else 1
            high = 64 if key == "runs_per_gpu" else MAX_PER_RUN
            check_range(f"resources.{key}", table[key], low=low, high=high, integer=True)
            kw[key] = int(table[key])
    return ResourceRequest(**kw)


def parse_resources(table: Any, families: Sequence[str] = ()) -> ResourceConfig:
    """Validate a ``[resources]`` table (``families``: the config's family names, with
    ``dense`` for the dense ladder; an override naming another family is refused)."""
    if table is None:
        return ResourceConfig()
    if not isinstance(table, dict):
        raise ConfigError(f"[resources] must be a table; got {table!r}")
    fam_tables = table.get("family", {})
    default = _parse_request({k: v for k, v in table.items() if k != "family"}, "[resources]")
    if not isinstance(fam_tables, dict):
        raise ConfigError(f"[resources.family] must be a table of family names; "
                          f"got {fam_tables!r}")
    overrides = []
    for name, sub in fam_tables.items():
        if families and name not in families:
            raise ConfigError(f"'resources.family.{name}' names no family of this sweep; "
                              f"families: {', '.join(families)}")
        overrides.append((name, _parse_request(sub, f"[resources.family.{name}]")))
    config = ResourceConfig(default=default, families=tuple(overrides))
    for name, _ in (("", None), *overrides):
        _check_consistent(config.for_family(name), name)
    return config


def _check_consistent(req: ResourceRequest, family: str) -> None:
    where = f"resources.family.{family}" if family else "resources"
    g, n, c = req.gpus_per_run, req.nproc, req.cpus_per_run
    if (req.runs_per_gpu or 1) > 1 and ((g or 1) > 1 or (n or 1) > 1):
        raise ConfigError(f"'{where}.runs_per_gpu' > 1 shares a GPU between single-GPU, "
                          f"single-process runs; got gpus_per_run {g}, nproc {n}")
    if g and n is not None and n != g:
        raise ConfigError(f"'{where}.nproc' must equal gpus_per_run ({g}: one process per "
                          f"GPU); got {n}")
    if c is not None and n is not None and c < n:
        raise ConfigError(f"'{where}.cpus_per_run' must be >= nproc ({n}: at least one core "
                          f"per process); got {c}")


def resolve_resources(req: ResourceRequest, *, device: str, default_cpus: int,
                      gpu_count: int) -> RunResources:
    """Fill a request's defaults for a run on ``device`` (its ``TrainConfig.device``).

    GPUs: 1 on ``cuda``, 0 on ``cpu``; with ``auto``, 1 when ``gpu_count`` > 0. A run on
    ``cpu`` asking for GPUs is refused. Processes: one per GPU (at least one). Cores:
    ``default_cpus`` (the local pool's ``cores // workers``), at least one per process.
    ``runs_per_gpu`` applies to single-GPU runs only (CPU runs ignore it).
    """
    cuda = device.startswith("cuda")
    gpus = req.gpus_per_run
    if gpus is None:
        gpus = 1 if cuda or (device == "auto" and gpu_count > 0) else 0
    if device == "cpu" and gpus:
        raise ConfigError(f"'resources.gpus_per_run' must be 0 for runs on device 'cpu'; "
                          f"got {gpus}")
    if cuda and not gpus:
        raise ConfigError(f"'resources.gpus_per_run' must be >= 1 for runs on device "
                          f"{device!r}; got 0")
    nproc = req.nproc if req.nproc is not None else max(1, gpus)
    cpus = req.cpus_per_run if req.cpus_per_run is not None else max(default_cpus, nproc)
    share = req.runs_per_gpu or 1
    if gpus != 1:
        if share > 1 and gpus > 1:
            raise ConfigError(f"'resources.runs_per_gpu' > 1 needs single-GPU runs; got "
                              f"gpus_per_run {gpus}")
        share = 1
    return RunResources(gpus=gpus, cpus=cpus, nproc=nproc, share=share)


def check_fits(name: str, res: RunResources, *, gpus: int, cpus: int, where: str) -> None:
    """Refuse a run whose request exceeds what one machine has (one line); ``where`` names
    that machine (``this machine``, ``the largest Ray node``)."""
    if res.gpus > gpus:
        raise ConfigError(f"run {name!r} asks for {res.gpus} GPU(s) (resources.gpus_per_run) "
                          f"but {where} has {gpus}; lower gpus_per_run")
    if res.cpus > cpus:
        raise ConfigError(f"run {name!r} asks for {res.cpus} CPU core(s) "
                          f"(resources.cpus_per_run) but {where} has {cpus}; lower "
                          "cpus_per_run")


def local_gpu_count() -> int:
    """GPUs this machine offers, without importing torch: ``CUDA_VISIBLE_DEVICES`` when
    set (empty = none), else the lines of ``nvidia-smi -L`` (0 without the tool)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class Slot:
    """The devices one local run holds: CPU core ids (its affinity) and GPU ids (its
    ``CUDA_VISIBLE_DEVICES``, in the numbering of the driver's visible devices)."""

    cores: tuple[int, ...]
    gpus: tuple[int, ...]
    held: tuple[int, ...] = field(default=(), repr=False, compare=False)
    """The pool's (virtual) core slots this run holds."""
    gpu_load: Fraction = field(default=Fraction(1), repr=False, compare=False)
    """The share of each of its GPUs this run holds (1: the whole GPU)."""

    def cuda_visible_devices(self, visible: str | None = None) -> str:
        """The run's ``CUDA_VISIBLE_DEVICES``: its GPU ids mapped through the driver's own
        ``visible`` list when it has one (empty string: no GPU)."""
        names = [d.strip() for d in visible.split(",")] if visible else None
        return ",".join(names[g] if names else str(g) for g in self.gpus)


class DevicePool:
    """Free cores and GPUs of the local machine; :meth:`take` gives a run its own.

    ``cores``: the core ids runs may use (the driver's CPU affinity); ``slots`` virtual
    cores are cycled over them when more concurrent threads are asked for than there are
    cores (``workers`` > cores oversubscribes, as asked). ``gpus``: the number of visible
    GPUs (injectable; :func:`local_gpu_count` by default). Each GPU's load is the sum of
    the shares its runs hold: exclusive runs need idle GPUs; a shared run (``share`` > 1)
    goes to the least-loaded GPU with room for ``1/share`` more.
    """

    def __init__(self, cores: Sequence[int], gpus: int, *, slots: int | None = None) -> None:
        if not cores:
            raise ValueError("DevicePool needs at least one core")
        self._cores = tuple(cores)
        n = max(len(self._cores), slots or 0)
        self._free_cores = list(range(n))
        self._load = [Fraction(0)] * gpus
        self.n_cores, self.n_gpus = n, gpus

    def _pick_gpus(self, res: RunResources) -> tuple[list[int], Fraction] | None:
        if res.gpus == 0:
            return [], Fraction(1)
        if res.share > 1:
            part = Fraction(1, res.share)
            room = [g for g, load in enumerate(self._load) if load + part <= 1]
            return ([min(room, key=lambda g: (self._load[g], g))], part) if room else None
        idle = [g for g, load in enumerate(self._load) if load == 0]
        return (idle[:res.gpus], Fraction(1)) if len(idle) >= res.gpus else None

    def take(self, res: RunResources) -> Slot | None:
        """Reserve ``res.cpus`` cores and ``res.gpus`` GPUs (lowest ids first; a shared
        run's on the least-loaded GPU), or ``None`` while not enough are free."""
        picked = self._pick_gpus(res)
        if len(self._free_cores) < res.cpus or picked is None:
            return None
        gpus, part = picked
        for g in gpus:
            self._load[g] += part
        virt, self._free_cores = self._free_cores[:res.cpus], self._free_cores[res.cpus:]
        cores = tuple(sorted({self._cores[v % len(self._cores)] for v in virt}))
        return Slot(cores=cores, gpus=tuple(gpus), held=tuple(virt), gpu_load=part)

    def give(self, slot: Slot) -> None:
        """Return a finished run's devices."""
        self._free_cores = sorted(self._free_cores + list(slot.held))
        for g in slot.gpus:
            self._load[g] -= slot.gpu_load
