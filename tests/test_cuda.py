"""CUDA paths, run where a GPU is present (skipped elsewhere; CI has none).

The bf16 ``grouped_mm`` back-end against the fp32 reference loop, a compiled bf16 training
run, and a resume from the trainer's sharded (``torch.distributed.checkpoint``) files.
``benchmarks/gpu_session.sh`` runs this file on a lent GPU.
"""

from __future__ import annotations

import pytest
import torch

from moescale.model import MoEConfig, MoELayer
from moescale.model.moe_backends import grouped_mm_usable
from moescale.spec import ModelSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

D, F_EXPERT, E, K = 64, 32, 8, 2


def _layer(backend: str, **cfg) -> MoELayer:
    torch.manual_seed(0)
    layer = MoELayer(d_model=D, n_experts=E, top_k=K, d_expert=F_EXPERT, n_shared=1,
                     d_shared=F_EXPERT, cfg=MoEConfig(backend=backend, **cfg))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.1)
    return layer


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _fwd_bwd(layer: MoELayer, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, aux, _ = layer(x)
    (y.float().square().sum() + aux).backward()
    return {"y": y.float(), "x.grad": x.grad.float(),
            **{n: p.grad.float() for n, p in layer.named_parameters()}}


@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_grouped_mm_bf16_matches_the_loop(capacity_factor):
    """Relative error of the output and of every gradient, bf16 ``grouped_mm`` against the
    loop back-end on the same bf16 routing (a wrong segment, mask or permutation is O(1);
    bf16 rounding 1e-3 to 1e-2)."""
    x = torch.randn(1000, D, device="cuda")
    got_layer = _layer("grouped", capacity_factor=capacity_factor).cuda().bfloat16()
    assert grouped_mm_usable(x.bfloat16(), got_layer.experts.w_gate_up)
    got = _fwd_bwd(got_layer, x.bfloat16())
    assert all(torch.isfinite(t).all() for t in got.values())
    same = _fwd_bwd(_layer("loop", capacity_factor=capacity_factor).cuda().bfloat16(),
                    x.bfloat16())
    for name, ref in same.items():
        assert _rel(got[name], ref) < 3e-2, name


def test_grouped_mm_bf16_experts_match_fp32_on_one_routing():
    """The routed experts alone, bf16 ``grouped_mm`` against the fp32 loop, both given the
    same fp32 routing. (Whole layers would route differently: bf16 rounding flips near-tied
    top-k choices, an O(1) change for those tokens.)"""
    x = torch.randn(1000, D, device="cuda")
    routing = _layer("loop").cuda().router(x)
    idx, gates = routing.expert_idx.detach(), routing.gates.detach()
    outs = []
    for backend, dtype in (("grouped", torch.bfloat16), ("loop", torch.float32)):
        layer = _layer(backend).cuda().to(dtype)
        xx = x.to(dtype).requires_grad_(True)
        y = layer.run_experts(xx, idx, gates.to(dtype), layer.experts)
        y.float().square().sum().backward()
        outs.append({"y": y.float(), "x.grad": xx.grad.float(),
                     **{n: p.grad.float() for n, p in layer.experts.named_parameters()}})
    for name, ref in outs[1].items():
        assert _rel(outs[0][name], ref) < 3e-2, name


def test_compiled_bf16_moe_training_run(token_cache, tmp_path):
    from moescale.train import TrainConfig, train

    spec = ModelSpec(name="cuda-moe", d_model=64, n_layers=2, n_heads=2, vocab_size=257,
                     n_experts=8, top_k=2, n_shared_experts=1, d_expert=32)
    cfg = TrainConfig(compute=3e11, seq_len=64, cache_dir=token_cache, device="cuda",
                      compile=True, n_evals=2)
    result = train(spec, cfg, tmp_path / "run")
    assert result["status"] == "completed"
    assert result["runtime"]["autocast_dtype"] == "bfloat16" and result["runtime"]["compile"]
    assert 0 < result["val_loss"] < 5.6  # below the uniform byte loss ln 257


def test_sharded_checkpoint_resume_on_cuda(token_cache, tmp_path, monkeypatch):
    """The trainer's DCP checkpoint path on one GPU: a crash after the 2nd sharded save,
    a resume, and the uninterrupted run's final loss (deterministic kernels)."""
    from _train_helpers import sharded_crash

    from moescale.train import TrainConfig, train

    spec = ModelSpec(name="tiny", d_model=64, n_layers=2, n_heads=2, vocab_size=257, d_ffn=128)
    cfg = TrainConfig(compute=2e10, seq_len=64, cache_dir=token_cache, device="cuda",
                      compile=False, deterministic=True, checkpoint_every_steps=4, n_evals=2)
    ref = train(spec, cfg, tmp_path / "ref")
    restore = sharded_crash(monkeypatch, after=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(spec, cfg, out)
    restore()
    resumed = train(spec, cfg, out)
    assert resumed["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-3)
