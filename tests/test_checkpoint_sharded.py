"""Sharded (DCP) checkpoints: FSDP2 on 2 CPU ranks (gloo) saves, 1 rank loads (resharding);
checksums, fallback to the previous generation, and no code from a planted ``.metadata``."""

from __future__ import annotations

import os
import pickle
import socket
import warnings
from pathlib import Path

import pytest
import torch

from moescale.errors import DataError
from moescale.model import build_model
from moescale.spec import ModelSpec
from moescale.train import checkpoint as ck
from moescale.train import parallel
from moescale.train import sharded as sh

SPEC = ModelSpec(name="tiny-moe", d_model=32, n_layers=2, n_heads=2, vocab_size=257,
                 n_experts=4, top_k=2, n_shared_experts=1, d_expert=16)
ONE = parallel.DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1,
                           device=torch.device("cpu"), initialized_here=False)


def _model_and_optimizer(seed: int, shard=None):
    torch.manual_seed(seed)
    model = build_model(SPEC, None, init_std=0.02, device=torch.device("cpu"))
    if shard is not None:  # FSDP2 replaces the parameters: the optimizer comes after
        for block in model.blocks:
            shard(block)
        shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    return model, opt


def _step(model, opt, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randint(0, SPEC.vocab_size, (4, 16), generator=g)
    out = model(x, x)
    (out.loss + out.aux_loss).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _payload(step: int, world: int) -> dict:
    return {"run_key": {"spec": {}, "train": {}}, "step": step, "rng": ck.rng_state(),
            "metrics_lines": step, "wall_time_s": 0.0, "step_losses": [0.0] * step,
            "last_val_loss": None, "stat_keys": [], "world_size": world, "batch_tokens": 64}


def _fsdp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ctx = parallel.DistContext(rank=rank, world_size=world, local_rank=rank,
                               local_world_size=world, device=torch.device("cpu"),
                               initialized_here=True)
    model, opt = _model_and_optimizer(0, shard=fully_shard)
    for step in (1, 2):
        _step(model, opt, step)
        sh.save_sharded(run_dir, model, opt, _payload(step, world), ctx)
        # the full (gathered) state, collective; rank 0 receives it
        full = {"model": parallel.model_state(model, True),
                "optimizer": parallel.optimizer_state(model, opt, True)}
        if rank == 0:
            full["optimizer"] = full["optimizer"]["state"]
            torch.save(full, Path(run_dir) / f"full{step}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fqn_optimizer_state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt)["state"]


def _assert_loaded_equals(model, opt, full: dict) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(full["model"])
    for k, v in full["model"].items():
        assert torch.equal(got[k], v), k
    state = _fqn_optimizer_state(model, opt)
    for fqn, entry in full["optimizer"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[fqn][name], entry[name]), (fqn, name)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """A run folder with two sharded checkpoints written by FSDP2 on 2 CPU ranks."""
    import torch.multiprocessing as mp

    run_dir = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(run_dir)), nprocs=2, join=True)
    return run_dir


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fsdp2_checkpoint_reshards_into_one_rank(fsdp_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    files = sorted(p.name for p in (run / sh.SHARDED_NAME).iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]  # 2 ranks' shards
    model, opt = _model_and_optimizer(seed=7)  # other init: the load must overwrite it
    meta = sh.load_sharded(run, model, opt, ONE, n_steps=10, batch_tokens=64)
    assert meta["step"] == 2 and meta["world_size"] == 2
    _assert_loaded_equals(model, opt, torch.load(run / "full2.pt", weights_only=True))
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    # ... and it keeps training from there
    _step(model, opt, 3)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_damaged_shard_falls_back_to_previous(fsdp_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    shard = run / sh.SHARDED_NAME / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    model, opt = _model_and_optimizer(seed=7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = sh.load_sharded(run, model, opt, ONE, n_steps=10)
    assert meta["step"] == 1
    assert any("checksum mismatch in __1_0.distcp" in str(w.message) for w in caught)
    _assert_loaded_equals(model, opt, torch.load(run / "full1.pt", weights_only=True))
    assert (run / sh.DAMAGED_SHARDED_NAME).is_dir() and not (run / sh.SHARDED_NAME).exists()
    ck.remove_checkpoints(run)
    assert not any(run.glob("checkpoint.*"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_metadata_pickle_runs_nothing(tmp_path):
    """An attacker who rewrites ``.metadata`` and the checksums in ``meta.pt`` still gets
    no code run: the metadata unpickler admits DCP's classes only."""
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: "assuming ... a single process"
        sh.save_sharded(tmp_path, model, opt, _payload(1, 1), ONE)
    folder = tmp_path / sh.SHARDED_NAME
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    meta = torch.load(folder / sh.META_NAME, weights_only=True)
    meta.pop("manifest"), meta.pop("checkpoint_version")
    meta["files"] = sh._file_hashes(folder)
    (folder / sh.META_NAME).write_bytes(ck.encode_checkpoint(meta))
    with pytest.raises(DataError, match="cannot load sharded checkpoint .* safely "
                                        r"\(posix.system is not allowed in DCP metadata\)"):
        sh.load_sharded(tmp_path, *_model_and_optimizer(1), ONE)
    assert not marker.exists()


def test_sharded_step_past_the_plan_is_refused(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sh.save_sharded(tmp_path, model, opt, _payload(5, 1), ONE)
    with pytest.raises(DataError, match=r"'step' .* must be an int in \[1, 5\)"):
        sh.load_sharded(tmp_path, model, opt, ONE, n_steps=5)


def test_trainer_resumes_from_sharded_checkpoints_bit_identically(token_cache, tmp_path,
                                                                  monkeypatch, one_torch_thread):
    """The trainer's FSDP2 checkpoint path (save_sharded / load_sharded) on one CPU process:
    the runtime is marked ``fsdp`` (FSDP2 itself needs CUDA in the trainer; on one rank the
    model is not wrapped), a crash after the 3rd sharded save, a resume, and the same
    metrics as an uninterrupted run."""
    from _train_helpers import sharded_crash

    from moescale.train import TrainConfig, train

    spec = ModelSpec(name="tiny", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
    cfg = TrainConfig(compute=1.5e9, seq_len=32, cache_dir=token_cache, learning_rate=3e-3,
                      log_every=1, checkpoint_every_steps=2, n_evals=4, threads=1)
    ref = train(spec, cfg, tmp_path / "ref")
    restore = sharded_crash(monkeypatch, after=3)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(spec, cfg, out)
    assert (out / sh.SHARDED_NAME / "meta.pt").is_file()
    assert (out / sh.PREVIOUS_SHARDED_NAME).is_dir() and not (out / ck.CHECKPOINT_NAME).exists()
    restore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: "assuming ... a single process"
        resumed = train(spec, cfg, out)
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert resumed["val_loss"] == ref["val_loss"]
    assert not any(out.glob("checkpoint.*"))
