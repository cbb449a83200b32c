"""Per-run resources: the [resources] table, defaults, capacity checks, the device book."""

from __future__ import annotations

import os
import sys

import pytest

from moescale.errors import ConfigError
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.launch import torchrun_command
from moescale.sweep.planner import plan_sweep
from moescale.sweep.resources import (
    DevicePool,
    ResourceRequest,
    RunResources,
    check_fits,
    local_gpu_count,
    resolve_resources,
)

DOC = {"sweep": {"name": "r", "budgets": [1e12]}, "dense": {"sizes": [1]},
       "family": [{"kind": "activation", "name": "act", "n_experts": [4]}]}


def test_table_with_family_override_reaches_the_spec():
    sw = parse_sweep_config({**DOC, "resources": {"gpus_per_run": 1, "cpus_per_run": 4,
                                                "family": {"act": {"gpus_per_run": 2}}}})
    assert sw.resources.for_family("dense") == ResourceRequest(gpus_per_run=1, cpus_per_run=4)
    assert sw.resources.for_family("act") == ResourceRequest(gpus_per_run=2, cpus_per_run=4)
    assert sw.to_dict()["resources"] == {"gpus_per_run": 1, "cpus_per_run": 4,
                                         "family": {"act": {"gpus_per_run": 2}}}
    assert plan_sweep(sw).to_dict()["resources"] == sw.to_dict()["resources"]
    assert parse_sweep_config(DOC).resources.for_family("act") == ResourceRequest()


@pytest.mark.parametrize("table, match", [
    ({"gpus": 1}, r"unknown key\(s\) 'gpus' in \[resources\]"),
    ({"gpus_per_run": -1}, "resources.gpus_per_run"),
    ({"cpus_per_run": 0}, "resources.cpus_per_run"),
    ({"nproc": 1.5}, "resources.nproc"),
    ({"gpus_per_run": 10**6}, "resources.gpus_per_run"),
    ({"gpus_per_run": 2, "nproc": 3}, r"'resources.nproc' must equal gpus_per_run \(2"),
    ({"cpus_per_run": 1, "nproc": 2}, r"'resources.cpus_per_run' must be >= nproc \(2"),
    ({"family": {"nope": {"gpus_per_run": 1}}}, "'resources.family.nope' names no family"),
    ({"family": {"act": {"nproc": 2, "gpus_per_run": 1}}}, "resources.family.act.nproc"),
    ({"family": {"act": 3}}, r"\[resources.family.act\] must be a table"),
    ({"runs_per_gpu": 0}, "resources.runs_per_gpu"),
    ({"runs_per_gpu": 65}, "resources.runs_per_gpu"),
    ({"runs_per_gpu": 4, "gpus_per_run": 2}, r"'resources.runs_per_gpu' > 1 shares a GPU"),
    ({"runs_per_gpu": 4, "nproc": 2, "cpus_per_run": 2}, "single-process runs"),
])
def test_bad_tables_are_one_line_errors(table, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_sweep_config({**DOC, "resources": table})
    assert "\n" not in str(info.value)


def test_defaults_follow_the_device():
    none = ResourceRequest()
    # CPU: no GPU, one process, the pool's share of cores
    assert resolve_resources(none, device="cpu", default_cpus=1, gpu_count=8) == \
        RunResources(gpus=0, cpus=1, nproc=1)
    # auto: a GPU when the machine has one
    assert resolve_resources(none, device="auto", default_cpus=2, gpu_count=0).gpus == 0
    assert resolve_resources(none, device="auto", default_cpus=2, gpu_count=4) == \
        RunResources(gpus=1, cpus=2, nproc=1)
    # one process per GPU, at least one core per process
    r = resolve_resources(ResourceRequest(gpus_per_run=4), device="cuda", default_cpus=1,
                          gpu_count=8)
    assert r == RunResources(gpus=4, cpus=4, nproc=4) and r.torchrun
    with pytest.raises(ConfigError, match="'resources.gpus_per_run' must be 0 for runs on "
                                          "device 'cpu'; got 1"):
        resolve_resources(ResourceRequest(gpus_per_run=1), device="cpu", default_cpus=1,
                          gpu_count=1)
    with pytest.raises(ConfigError, match="must be >= 1 for runs on device 'cuda'"):
        resolve_resources(ResourceRequest(gpus_per_run=0), device="cuda", default_cpus=1,
                          gpu_count=1)


def test_runs_per_gpu_resolves_for_single_gpu_runs_only():
    shared = ResourceRequest(runs_per_gpu=4)
    r = resolve_resources(shared, device="cuda", default_cpus=2, gpu_count=1)
    assert r == RunResources(gpus=1, cpus=2, nproc=1, share=4)
    assert r.gpu_fraction == 0.25 and r.to_dict()["runs_per_gpu"] == 4
    # CPU runs ignore it (a sweep may mix devices through family overrides)
    assert resolve_resources(shared, device="cpu", default_cpus=1, gpu_count=1).share == 1
    assert RunResources(gpus=2, cpus=2, nproc=2).gpu_fraction == 2
    sw = parse_sweep_config({**DOC, "resources": {"family": {"act": {"runs_per_gpu": 8}}}})
    assert sw.resources.for_family("act").runs_per_gpu == 8
    assert sw.resources.for_family("dense").runs_per_gpu is None


def test_device_pool_packs_shared_runs_and_keeps_whole_gpus_for_exclusive_ones():
    pool = DevicePool(list(range(16)), gpus=2)
    quarter = RunResources(gpus=1, cpus=1, nproc=1, share=4)
    slots = [pool.take(quarter) for _ in range(8)]
    # least-loaded GPU first: they alternate, four on each, then the GPUs are full
    assert [s.gpus for s in slots] == [(0,), (1,)] * 4
    assert pool.take(quarter) is None
    pool.give(slots[1])  # a quarter of GPU 1 frees up
    assert pool.take(RunResources(gpus=1, cpus=1, nproc=1)) is None  # exclusive: no idle GPU
    assert pool.take(quarter).gpus == (1,)
    for s in slots[::2]:
        pool.give(s)  # GPU 0 is idle again
    assert pool.take(RunResources(gpus=1, cpus=1, nproc=1)).gpus == (0,)
    assert pool.take(RunResources(gpus=1, cpus=1, nproc=1, share=2)) is None  # 0 whole, 1 full


def test_oversize_request_names_run_field_and_capacity():
    with pytest.raises(ConfigError, match=r"run 'x' asks for 3 GPU\(s\) \(resources."
                                          r"gpus_per_run\) but here has 2; lower gpus_per_run"):
        check_fits("x", RunResources(3, 3, 3), gpus=2, cpus=64, where="here")
    with pytest.raises(ConfigError, match=r"asks for 9 CPU core\(s\)"):
        check_fits("x", RunResources(0, 9, 1), gpus=0, cpus=8, where="here")
    check_fits("x", RunResources(2, 8, 2), gpus=2, cpus=8, where="here")


def test_device_pool_hands_out_disjoint_sets_and_takes_them_back():
    pool = DevicePool([10, 11, 12, 13], gpus=3)
    a = pool.take(RunResources(gpus=2, cpus=2, nproc=2))
    b = pool.take(RunResources(gpus=1, cpus=1, nproc=1))
    assert a.gpus == (0, 1) and a.cores == (10, 11)
    assert b.gpus == (2,) and b.cores == (12,)
    assert pool.take(RunResources(gpus=1, cpus=1, nproc=1)) is None  # no GPU left
    c = pool.take(RunResources(gpus=0, cpus=1, nproc=1))
    assert c.cores == (13,) and c.gpus == ()
    assert pool.take(RunResources(gpus=0, cpus=1, nproc=1)) is None  # no core left
    pool.give(a)
    d = pool.take(RunResources(gpus=2, cpus=2, nproc=2))
    assert d.gpus == (0, 1) and set(d.cores) == {10, 11}
    # the run's CUDA_VISIBLE_DEVICES maps through the driver's own list
    assert b.cuda_visible_devices("4,6,7") == "7" and d.cuda_visible_devices(None) == "0,1"
    assert c.cuda_visible_devices("4,6,7") == ""


def test_device_pool_oversubscribes_cores_only_when_asked():
    pool = DevicePool([0, 1], gpus=0, slots=4)  # 4 workers x 1 thread on 2 cores
    slots = [pool.take(RunResources(0, 1, 1)) for _ in range(4)]
    assert [s.cores for s in slots] == [(0,), (1,), (0,), (1,)]
    assert pool.take(RunResources(0, 1, 1)) is None


def test_local_gpu_count_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == 0


def test_torchrun_command_line():
    cmd = torchrun_command(4, "/runs/k.launch/payload.json")
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "4", "-m", "moescale.sweep.launch",
                   "/runs/k.launch/payload.json"]


class _FailingRay:
    """A ``ray`` whose ``init`` fails the way Ray 2.60 does against a token cluster."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def init(self, **kwargs):
        raise self.exc


def test_ray_join_failure_says_whether_a_token_is_missing(tmp_path, monkeypatch):
    from moescale.sweep.execute import _join_ray

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    bare = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    with pytest.raises(ConfigError, match="no Ray authentication token is set.*RAY_AUTH_TOKEN"):
        _join_ray(_FailingRay(bare), "10.0.0.1:6379", 1)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    missing = RuntimeError("Token authentication is enabled but no authentication token "
                           "was found")
    with pytest.raises(ConfigError, match="token authentication is on but no token was found"):
        _join_ray(_FailingRay(missing), "10.0.0.1:6379", 1)
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    with pytest.raises(ConfigError, match=r"a token is set \(RAY_AUTH_TOKEN\)") as info:
        _join_ray(_FailingRay(bare), "10.0.0.1:6379", 1)
    assert "\n" not in str(info.value)
    assert os.environ["RAY_AUTH_MODE"] == "token"  # a given token switches token mode on
