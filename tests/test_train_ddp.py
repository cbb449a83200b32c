"""Two gloo processes under torch.distributed.run match one process with the same batch."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from _train_helpers import TINY_DENSE, env_with, read_metrics, run, write_spec

ARGS = ["--compute", "1.2e9", "--seq-len", "32", "--batch-tokens", "256", "--lr", "2e-3",
        "--log-every", "1", "--threads", "1", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_matches_single_process(tmp_path):
    env = env_with(tmp_path / "cache")
    spec = write_spec(tmp_path, TINY_DENSE)
    single = run([sys.executable, "-m", "moescale.cli", "train", str(spec), "--out",
                  str(tmp_path / "one"), *ARGS], env, timeout=200)
    assert single.returncode == 0, single.stderr
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "moescale.cli", "train", str(spec), "--out", str(tmp_path / "two"), *ARGS],
              env, timeout=200)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    r1 = json.loads(single.stdout)
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r1["batch_tokens"] == r2["batch_tokens"] and r1["steps"] == r2["steps"] > 10
    m1 = read_metrics(tmp_path / "one" / "metrics.jsonl")
    m2 = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(m1) == len(m2)
    for a, b in zip(m1, m2, strict=True):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-4)


def _reduce_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch
    import torch.distributed as dist

    from moescale.train import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = parallel.DistContext(rank=rank, world_size=world, local_rank=rank,
                               local_world_size=world, device=torch.device("cpu"),
                               initialized_here=True)
    mine = torch.tensor([10.0 + rank, 5.0 - rank], dtype=torch.float64)
    got = (parallel.all_reduce_min(mine, ctx).tolist(), parallel.all_reduce_sum(mine, ctx).tolist())
    with open(f"{out}.{rank}", "w") as f:
        json.dump(got, f)
    dist.destroy_process_group()


def test_all_reduce_min_and_sum_over_two_gloo_ranks(tmp_path):
    """The reductions the trainer uses to agree on a plan (min: the GPU micro-batch cap)
    and to average step statistics (sum), on two real gloo ranks."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.spawn(_reduce_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        with open(f"{out}.{rank}") as f:
            assert json.load(f) == [[10.0, 4.0], [21.0, 9.0]]
