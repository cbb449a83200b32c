"""Memory estimate against torch's real sizes; refusals before any allocation."""

from __future__ import annotations

import pytest
import torch

from moescale.errors import ConfigError
from moescale.model import build_model
from moescale.spec import ModelSpec
from moescale.train import resources as rs

SPECS = [
    ModelSpec(name="dense", d_model=64, n_layers=2, n_heads=4, vocab_size=257, d_ffn=256),
    ModelSpec(name="dense-gqa", d_model=128, n_layers=3, n_heads=8, n_kv_heads=2,
              vocab_size=1024, d_ffn=384),
    ModelSpec(name="moe", d_model=64, n_layers=2, n_heads=4, vocab_size=257, n_experts=8,
              top_k=2, n_shared_experts=1, d_expert=32),
    ModelSpec(name="moe-mixed", d_model=128, n_layers=3, n_heads=4, vocab_size=257,
              n_experts=16, top_k=4, n_shared_experts=1, d_expert=32, n_dense_layers=1,
              d_ffn=256),
]


def _measure(spec: ModelSpec, b: int, s: int) -> dict[str, int]:
    """Bytes torch really holds: parameters, gradients, AdamW moments after one step, and
    the storages autograd saved in the forward pass (plus the logits and their gradient)."""
    torch.manual_seed(0)
    model = build_model(spec, None, init_std=0.02, device=torch.device("cpu"))
    x = torch.randint(0, spec.vocab_size, (b, s))
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, x)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    act = sum(v for k, v in saved.items() if k not in param_ptrs)
    logits = out.logits.untyped_storage()
    act += logits.nbytes() * (1 if logits.data_ptr() in saved else 2)  # + its gradient
    (out.loss + out.aux_loss).backward()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    opt.step()
    moments = sum(st[k].numel() * st[k].element_size()
                  for st in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    return {
        "params": sum(p.numel() * p.element_size() for p in model.parameters()),
        "grads": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
        "optimizer": moments,
        "activations": act,
    }


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_estimate_matches_torch(spec, one_torch_thread, monkeypatch):
    import moescale.model.moe_backends as mb

    monkeypatch.setattr(mb, "_PADDED_MAX_WORK", -1)  # the segment path the estimate models
    b, s = 4, 64
    real = _measure(spec, b, s)
    est = rs.estimate_memory(spec, b * s)
    assert est.params == real["params"]  # exact
    assert est.grads == real["grads"]
    assert est.optimizer == real["optimizer"]
    assert est.activations == pytest.approx(real["activations"], rel=0.05)
    assert est.ddp_buckets == 0
    assert est.total == est.params + est.grads + est.optimizer + est.activations


def test_estimate_scales_with_ranks_and_precision():
    spec = SPECS[1]
    one = rs.estimate_memory(spec, 512)
    ddp = rs.estimate_memory(spec, 512, world_size=4)
    fsdp = rs.estimate_memory(spec, 512, world_size=4, fsdp=True, bf16=True)
    assert ddp.ddp_buckets == one.grads and ddp.params == one.params
    assert fsdp.params == -(-one.params // 4) and fsdp.ddp_buckets == 0
    assert fsdp.activations == one.activations // 2


def test_check_memory_refuses_with_the_numbers():
    est = rs.MemoryEstimate(params=2**30, grads=2**30, optimizer=2**31, activations=2**30)
    rs.check_memory(est, "cpu", available=6 * 2**30)
    with pytest.raises(ConfigError, match=r"needs about 5 GiB of memory, 4 GiB RAM available.*"
                                          r"params 1 GiB.*--ignore-memory-check"):
        rs.check_memory(est, "cpu", available=4 * 2**30)
    with pytest.raises(ConfigError, match=r"10 GiB .* × 2 ranks"):
        rs.check_memory(est, "cpu", ranks_here=2, available=6 * 2**30)
    rs.check_memory(est, "cuda", ranks_here=2, available=6 * 2**30)  # one rank per GPU


def test_available_memory_is_plausible():
    have = rs.available_memory("cpu")
    from pathlib import Path

    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert have is not None and 0 < have <= total


def test_budget_below_one_step_is_refused():
    rs.check_budget(1e9, 256, 1e6)
    with pytest.raises(ConfigError, match=r"'compute' must be at least one optimizer step.*"
                                          r"2\.56e\+08 FLOPs\); got 1e-05"):
        rs.check_budget(1e-5, 256, 1e6)


def test_threads_bounded_by_cores():
    rs.check_threads(rs.cpu_cores())
    with pytest.raises(ConfigError, match=rf"'threads' must be an int in \[1, {rs.cpu_cores()}\]; "
                                          "got 100000"):
        rs.check_threads(100000)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gpu_micro_batch_is_the_largest_that_fits(spec):
    """The GPU default micro-batch: its estimate fits in half the memory, one more token's
    does not (above the 16k floor); with FSDP the sharded states leave more room."""
    avail = 2 * 2**30
    tokens = rs.fitting_micro_batch_tokens(spec, avail, bf16=True)
    assert tokens > 16384
    assert rs.estimate_memory(spec, tokens, bf16=True).total <= avail / 2
    assert rs.estimate_memory(spec, tokens + 1, bf16=True).total > avail / 2
    assert rs.fitting_micro_batch_tokens(spec, avail, world_size=4, fsdp=True) >= tokens
    assert rs.fitting_micro_batch_tokens(spec, 1000) == 16384
    with pytest.raises(ConfigError, match="'fraction'"):
        rs.fitting_micro_batch_tokens(spec, avail, fraction=0)


def _ctx(device: str, world: int = 1):
    from moescale.train.parallel import DistContext

    return DistContext(rank=0, world_size=world, local_rank=0, local_world_size=world,
                       device=torch.device(device), initialized_here=False)


def test_trainer_takes_the_gpu_micro_batch_only_on_cuda(monkeypatch):
    """On CUDA the trainer's plan runs the whole per-rank batch as one micro-batch when it
    fits (a GPU step of a small model costs its kernel launches); CPU keeps 16k tokens."""
    from moescale.train import trainer
    from moescale.train.config import TrainConfig, resolve_plan

    spec = SPECS[0]
    cfg = TrainConfig(compute=1e13, seq_len=256, batch_tokens=131072)
    monkeypatch.setattr(trainer, "available_memory", lambda device: 80 * 2**30)
    cuda, cpu = _ctx("cuda:0"), _ctx("cpu")
    on_gpu = resolve_plan(spec, cfg, micro_batch_tokens=trainer._micro_batch_cap(spec, cfg, cuda))
    on_cpu = resolve_plan(spec, cfg, micro_batch_tokens=trainer._micro_batch_cap(spec, cfg, cpu))
    assert (on_gpu.micro_batch_size, on_gpu.grad_accum) == (512, 1)
    assert (on_cpu.micro_batch_size, on_cpu.grad_accum) == (64, 8)
    fixed = TrainConfig(compute=1e13, seq_len=256, batch_tokens=131072, micro_batch_size=128)
    assert trainer._micro_batch_cap(spec, fixed, cuda) == 16384
    # fp32 activations take twice the bytes of bf16 ones: half the tokens fit
    fp32 = TrainConfig(compute=1e13, seq_len=256, batch_tokens=131072, dtype="float32")
    assert trainer._micro_batch_cap(spec, fp32, cuda) == rs.fitting_micro_batch_tokens(
        spec, 80 * 2**30, bf16=False) < trainer._micro_batch_cap(spec, cfg, cuda)
    # four runs sharing the GPU (a sweep's runs_per_gpu): each takes a quarter of the half
    alone = trainer._micro_batch_cap(spec, cfg, cuda)
    monkeypatch.setenv(rs.RUNS_PER_GPU_ENV, "4")
    shared = trainer._micro_batch_cap(spec, cfg, cuda)
    assert shared == rs.fitting_micro_batch_tokens(spec, 80 * 2**30, fraction=0.125) < alone


def test_every_rank_takes_the_smallest_gpu_micro_batch(monkeypatch):
    """With several ranks the cap is the minimum over them (all_reduce_min), so that every
    rank resolves the same plan; here the other rank has only 4 GiB free."""
    from moescale.train import trainer
    from moescale.train.config import TrainConfig

    spec = SPECS[0]
    cfg = TrainConfig(compute=1e13, seq_len=256, batch_tokens=131072)
    other = rs.fitting_micro_batch_tokens(spec, 4 * 2**30, world_size=2)
    monkeypatch.setattr(trainer, "available_memory", lambda device: 80 * 2**30)
    monkeypatch.setattr(trainer.parallel, "all_reduce_min",
                        lambda t, ctx: torch.minimum(t, torch.tensor([float(other)])))
    mine = rs.fitting_micro_batch_tokens(spec, 80 * 2**30, world_size=2)
    assert other < mine
    assert trainer._micro_batch_cap(spec, cfg, _ctx("cuda:0", world=2)) == other
