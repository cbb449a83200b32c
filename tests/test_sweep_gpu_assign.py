"""Which devices each sweep run is given: the local pool with a fake GPU count, Ray with
logical GPUs (``ray.init(num_gpus=2)`` needs no GPU), torchrun for nproc > 1."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.sweep.config import parse_sweep_config
from moescale.sweep.execute import _probe_runs_folder, run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.runner import read_curve
from moescale.sweep.store import open_store

TESTS = str(Path(__file__).parent)


def _plan(resources=None, budgets=(1e12, 3e12), train=None, name="g"):
    doc = {"sweep": {"name": name, "budgets": list(budgets)}, "dense": {"sizes": [0.25, 4]}}
    if resources is not None:
        doc["resources"] = resources
    if train is not None:
        doc["train"] = train
    return plan_sweep(parse_sweep_config(doc))


def seen_run(payload):
    """Stand-in for training: record what the run's process was given, hold it 0.5 s.

    In a sweep named ``*-meet`` a run first waits (up to 120 s) until two runs have
    started, so a backend that runs two at once is seen doing so however slowly its
    workers start.
    """
    t0 = time.time()
    if payload["config"]["extra"]["sweep"].endswith("-meet"):
        meet = Path(payload["out_dir"]).parent / ".meet"
        meet.mkdir(exist_ok=True)
        (meet / str(os.getpid())).touch()
        while len(os.listdir(meet)) < 2 and time.time() - t0 < 120:
            time.sleep(0.05)
    time.sleep(0.5)
    seen = {"name": payload["name"], "start": t0, "end": time.time(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "runs_per_gpu": os.environ.get("MOESCALE_RUNS_PER_GPU"),
            "rank": os.environ.get("RANK"), "world_size": os.environ.get("WORLD_SIZE"),
            "cores": sorted(os.sched_getaffinity(0))}
    out = Path(payload["out_dir"])
    with open(out / f"seen-{os.getpid()}.json", "w") as fh:
        json.dump(seen, fh)
    return {"result": {"status": "completed", "loss": 3.0, "tokens": 10,
                       "flops": payload["config"]["compute"]}, "curve": []}


def _seen(store_path: Path) -> list[dict]:
    return [json.loads(f.read_text())
            for f in Path(str(store_path) + ".runs").glob("*/seen-*.json")]


def _assert_no_shared_gpu(seen: list[dict]) -> None:
    """Different runs whose time intervals overlap hold disjoint GPU sets."""
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            if a["name"] != b["name"] and a["start"] < b["end"] and b["start"] < a["end"]:
                ga = set(a["cuda_visible_devices"].split(","))
                gb = set(b["cuda_visible_devices"].split(","))
                assert not ga & gb, (a, b)


def test_local_pool_gives_each_concurrent_run_its_own_gpu(tmp_path, monkeypatch):
    # the driver sees two GPUs named 5 and 7; runs must get one each, never both the same
    # (two runs keep it fast: each GPU run spawns a process; reuse of a returned GPU is
    # tested on the DevicePool and on Ray)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    plan = _plan(budgets=(1e12,))
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="local", workers=2, run_fn=seen_run)
        assert len(out.completed) == 2 and not out.failed
        placements = [json.loads(r["result_json"])["placement"] for r in st.runs()]
    seen = _seen(path)
    assert len(seen) == 2
    assert sorted(s["cuda_visible_devices"] for s in seen) == ["5", "7"]  # one each
    _assert_no_shared_gpu(seen)
    assert len({s["pid"] for s in seen}) == 2  # a fresh process per GPU run
    assert sorted(p["cuda_visible_devices"] for p in placements) == \
        sorted(s["cuda_visible_devices"] for s in seen)


def test_local_pool_shares_one_gpu_between_runs_when_asked(tmp_path, monkeypatch):
    # runs_per_gpu = 2 on one GPU: two runs hold GPU "3" at the same time, never more
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    plan = _plan(resources={"runs_per_gpu": 2}, budgets=(1e12,), name="g-meet")
    path = tmp_path / "s.db"
    with open_store(path) as st:
        said: list[str] = []
        monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
        out = run_sweep(plan, st, backend="local", workers=2, run_fn=seen_run,
                        progress=said.append)
        assert len(out.completed) == 2 and not out.failed, out.failed
        placements = [json.loads(r["result_json"])["placement"] for r in st.runs()]
    assert any("time-slices" in m for m in said)  # the cost of sharing without MPS is said
    seen = _seen(path)
    assert [s["cuda_visible_devices"] for s in seen] == ["3", "3"]
    assert [s["runs_per_gpu"] for s in seen] == ["2", "2"]  # the trainer sizes its share
    a, b = seen
    assert a["start"] < b["end"] and b["start"] < a["end"]  # they ran at once
    assert [p["runs_per_gpu"] for p in placements] == [2, 2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_pool_two_gpu_runs_get_disjoint_pairs_through_torchrun(tmp_path, monkeypatch):
    # a fake count of 4 GPUs is injected; each 2-GPU run launches 2 ranks with torchrun
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [TESTS, os.environ.get("PYTHONPATH", "")]))
    plan = _plan(resources={"gpus_per_run": 2}, budgets=(1e12,))
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="local", workers=4, gpus=4, run_fn=seen_run)
        assert not out.failed, out.failed
    seen = _seen(path)
    assert len(seen) == 4  # 2 runs x 2 ranks
    pairs = {s["name"]: set() for s in seen}
    for s in seen:
        assert s["world_size"] == "2"
        pairs[s["name"]].add(s["cuda_visible_devices"])
    # both ranks of a run see the run's pair; the two runs hold disjoint pairs
    assert sorted(v.pop() for v in pairs.values() if len(v) == 1) == ["0,1", "2,3"]
    _assert_no_shared_gpu(seen)


def test_oversize_request_refused_before_anything_runs(tmp_path):
    with open_store(tmp_path / "o.db") as st:
        with pytest.raises(ConfigError, match=r"asks for 3 GPU\(s\).*this machine has 2"):
            run_sweep(_plan(resources={"gpus_per_run": 3}), st, backend="local", workers=2,
                      gpus=2, run_fn=seen_run)
        assert st.count("running") == 0 and st.count("done") == 0
    assert _seen(tmp_path / "o.db") == []


def test_cpu_runs_get_no_gpu_and_their_own_core(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    plan = _plan(train={"device": "cpu"}, budgets=(1e12,))
    path = tmp_path / "s.db"
    with open_store(path) as st:
        run_sweep(plan, st, backend="local", workers=2, run_fn=seen_run)
    seen = _seen(path)
    assert len(seen) == 2 and all(s["cuda_visible_devices"] == "" for s in seen)
    if len(os.sched_getaffinity(0)) >= 2:
        for i, a in enumerate(seen):
            for b in seen[i + 1:]:
                if a["start"] < b["end"] and b["start"] < a["end"]:
                    assert not set(a["cores"]) & set(b["cores"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nproc_2_runs_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [TESTS, os.environ.get("PYTHONPATH", "")]))
    plan = _plan(resources={"nproc": 2, "cpus_per_run": 2}, budgets=(1e12,),
                 train={"device": "cpu"})
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="inline", run_fn=seen_run, gpus=0)
        assert not out.failed, out.failed
    seen = _seen(path)
    assert sorted((s["name"], s["rank"], s["world_size"]) for s in seen) == sorted(
        (r.name, rank, "2") for r in plan.runs for rank in ("0", "1"))
    log = next(Path(str(path) + ".runs").glob("*.launch/torchrun.log")).read_text()
    assert "--nproc-per-node 2 -m moescale.sweep.launch" in log


def test_runs_folder_probe_names_the_problem(tmp_path):
    marker = tmp_path / ".shared-probe-x"
    assert "not visible" in _probe_runs_folder(str(marker), "t")
    marker.write_text("other")
    assert "another value" in _probe_runs_folder(str(marker), "t")
    marker.write_text("t")
    assert _probe_runs_folder(str(marker), "t") is None


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_2gpu():
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token file written under ~/.ray
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, saved["PYTHONPATH"] or ""])
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.timeout(600)
def test_ray_tasks_request_gpus_and_get_their_own(tmp_path, ray_2gpu):
    plan = _plan(resources={"gpus_per_run": 1, "cpus_per_run": 1}, name="g-meet")
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="ray", run_fn=seen_run)
        assert len(out.completed) == 4 and not out.failed, out.failed
        # an oversize request is refused before anything runs
        with pytest.raises(ConfigError,
                           match=r"asks for 3 GPU\(s\).*the largest Ray node has 2"):
            run_sweep(_plan(resources={"gpus_per_run": 3}, budgets=(1e13,), name="g-meet"), st,
                      backend="ray", run_fn=seen_run)
        assert st.count("running") == 0
    seen = _seen(path)
    assert len(seen) == 4
    assert all(s["cuda_visible_devices"] in ("0", "1") for s in seen)
    _assert_no_shared_gpu(seen)
    assert len({s["pid"] for s in seen}) == 4  # no worker reused across GPU runs
    overlapping = [(a, b) for i, a in enumerate(seen) for b in seen[i + 1:]
                   if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "two 1-GPU runs should have run at once on 2 logical GPUs"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_runs_share_a_logical_gpu_when_asked(tmp_path, ray_2gpu):
    # num_gpus = 1/2: Ray itself puts two runs on one logical GPU
    plan = _plan(resources={"runs_per_gpu": 2, "cpus_per_run": 1}, budgets=(1e12,),
                 name="g-meet")
    path = tmp_path / "s.db"
    said: list[str] = []
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="ray", run_fn=seen_run, progress=said.append)
        assert not out.failed, out.failed
    assert any("time-slices" in m for m in said) == (
        not os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
    seen = _seen(path)
    assert len(seen) == 2 and all(s["cuda_visible_devices"] in ("0", "1") for s in seen)
    a, b = seen
    assert a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_cpu_runs_see_no_gpu(tmp_path, ray_2gpu):
    plan = _plan(train={"device": "cpu"}, budgets=(1e12,))
    path = tmp_path / "s.db"
    with open_store(path) as st:
        out = run_sweep(plan, st, backend="ray", run_fn=seen_run)
        assert not out.failed, out.failed
    assert [s["cuda_visible_devices"] for s in _seen(path)] == ["", ""]


TINY_2PROC = {
    "sweep": {"name": "tp", "budgets": [1.5e9], "seq_len": 32},
    "shape": {"d_model": [16, 24], "n_layers": [1, 2], "head_dim": 8, "aspect": 16},
    # a small learning rate, as in test_train_ddp: at [EL] Eq. 3's 0.04 the float
    # reduction-order difference of DDP grows to ~0.5% of the loss over 270 steps
    "train": {"batch_tokens": 512, "n_evals": 2, "eval_batches": 2, "device": "cpu",
              "threads": 1, "learning_rate": 2e-3, "log_every": 5},
    "dense": {"sizes": [1.0]},
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_two_process_gloo_run_through_a_sweep_matches_one_process(tmp_path):
    """A sweep run with nproc 2 trains under torchrun (gloo DDP) and records the same
    loss as the same run in one process (DDP averages the same global batch)."""
    two = plan_sweep(parse_sweep_config({**TINY_2PROC,
                                       "resources": {"nproc": 2, "cpus_per_run": 2}}))
    one = plan_sweep(parse_sweep_config(TINY_2PROC))
    assert [r.key for r in two.runs] == [r.key for r in one.runs]  # resources: not in key
    results, curves = {}, {}
    for label, plan in (("two", two), ("one", one)):
        with open_store(tmp_path / f"{label}.db") as st:
            out = run_sweep(plan, st, backend="inline", gpus=0)
            assert not out.failed, out.failed
            results[label] = json.loads(st.runs()[0]["result_json"])
            curves[label] = read_curve(st.run_dir(plan.runs[0].key))
    assert results["two"]["world_size"] == 2 and results["one"]["world_size"] == 1
    assert results["two"]["placement"]["nproc"] == 2
    assert results["two"]["steps"] == results["one"]["steps"] > 20
    assert len(curves["two"]) == len(curves["one"]) > 4
    for a, b in zip(curves["one"], curves["two"], strict=True):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert results["two"]["val_loss"] == pytest.approx(results["one"]["val_loss"], rel=1e-4)


class _OneNodeRay:
    """A ``ray`` whose remote calls run here, as if on a node that sees ``view`` as the
    driver's files (a node without the shared filesystem reads another folder)."""

    def __init__(self, view=None):
        self.view = view

    def remote(self, **_):
        ray = self

        class _Fn:
            def __init__(self, fn):
                self.fn = fn

            def options(self, **_):
                return self

            def remote(self, marker, token):
                if ray.view is not None:
                    marker = str(Path(ray.view) / Path(marker).name)
                return self.fn(marker, token)

        return _Fn

    def get(self, refs):
        return refs


def test_runs_folder_not_shared_by_a_node_is_refused(tmp_path):
    pytest.importorskip("ray")
    from moescale.sweep.execute import _check_shared_runs

    runs = tmp_path / "s.db.runs"
    runs.mkdir()
    node = {"NodeID": "ab" * 28, "NodeManagerAddress": "10.0.0.7", "Alive": True}
    _check_shared_runs(_OneNodeRay(), runs, [node])  # same filesystem: accepted
    elsewhere = tmp_path / "node-local"
    elsewhere.mkdir()
    with pytest.raises(ConfigError, match=r"Ray node 10.0.0.7 cannot use the runs folder .*"
                                          r"not visible.*shared filesystem") as info:
        _check_shared_runs(_OneNodeRay(view=elsewhere), runs, [node])
    assert "\n" not in str(info.value)
    assert list(runs.iterdir()) == []  # the marker is removed either way
