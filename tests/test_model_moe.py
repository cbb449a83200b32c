"""MoE layer: back-ends agree (outputs, grads, keys), routers, balancing losses, capacity."""

from __future__ import annotations

import math

import pytest
import torch

from moescale.errors import ConfigError
from moescale.model import MoEConfig, MoELayer, load_balancing_loss, z_loss
from moescale.model.cpu_kernels import KERNELS_ENV
from moescale.model.moe import apply_capacity
from moescale.model.moe_backends import (
    _partition,
    grouped_experts,
    loop_experts,
    resolve_backend,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, F_EXPERT, E, K = 32, 16, 8, 2


def _layer(backend: str, seed: int = 0, shared_gate: bool = True, **cfg) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(d_model=D, n_experts=E, top_k=K, d_expert=F_EXPERT, n_shared=1,
                     d_shared=F_EXPERT, shared_expert_gate=shared_gate,
                     cfg=MoEConfig(backend=backend, **cfg))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.1)
    return layer


def _run(layer: MoELayer, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, aux, stats = layer(x)
    (y.square().sum() + aux).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return y.detach(), x.grad, grads, stats


def _starve(layer: MoELayer, experts: list[int]) -> None:
    """Make ``experts`` unreachable: a large negative router bias via the score bias."""
    layer.router.score_bias = torch.zeros(E)
    layer.router.score_bias[experts] = -100.0


@pytest.mark.parametrize("router", ["softmax_topk", "softmax_topk_renorm", "sigmoid_topk"])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
@pytest.mark.parametrize("cpu_path", ["padded", "segments", "segments_python"])
@pytest.mark.parametrize("shared_gate", [True, False])
def test_backends_agree_on_outputs_and_grads(monkeypatch, router, capacity_factor, cpu_path,
                                             shared_gate):
    """``grouped`` (every CPU path: padded bmm for small problems, per-expert segments
    through the compiled loops and through the Python loop) against the reference loop,
    with a gated shared expert (added by the layer) and an ungated one (run by the
    back-end, inside the segment loops)."""
    import moescale.model.moe_backends as mb

    monkeypatch.setattr(mb, "_PADDED_MAX_WORK", 1 << 62 if cpu_path == "padded" else -1)
    if cpu_path == "segments_python":
        monkeypatch.setenv(KERNELS_ENV, "python")
    x = torch.randn(3, 21, D, generator=torch.Generator().manual_seed(3))
    results = []
    for backend in ("loop", "grouped"):
        layer = _layer(backend, router=router, capacity_factor=capacity_factor,
                       routed_scaling=1.5, shared_gate=shared_gate)
        _starve(layer, [1, 6])  # experts receiving no tokens
        results.append(_run(layer, x))
    y0, gx0, g0, s0 = results[0]
    assert s0["load"][[1, 6]].sum() == 0
    assert g0["experts.w_gate_up"][[1, 6]].abs().sum() == 0
    for y, gx, g, s in results[1:]:
        torch.testing.assert_close(y, y0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx, gx0, atol=1e-5, rtol=1e-5)
        assert g.keys() == g0.keys()
        for name in g0:
            torch.testing.assert_close(g[name], g0[name], atol=1e-5, rtol=1e-5)
        assert float(s["dropped_fraction"]) == float(s0["dropped_fraction"])


@pytest.mark.parametrize("kernels", ["compiled", "python"])
@pytest.mark.parametrize("shared_gate", [True, False])
def test_grouped_worker_threads_agree_with_loop(monkeypatch, kernels, shared_gate):
    """Large enough for the per-expert worker threads (and, compiled, their dynamic tail);
    same numbers as the reference loop, the shared expert inside the workers or not."""
    import moescale.model.moe_backends as mb

    if kernels == "python":
        monkeypatch.setenv(KERNELS_ENV, "python")
    monkeypatch.setattr(mb, "_PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(mb, "_PADDED_MAX_WORK", -1)
    torch.set_num_threads(2)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(4))
    y0, gx0, g0, _ = _run(_layer("loop", shared_gate=shared_gate), x)
    y1, gx1, g1, _ = _run(_layer("grouped", shared_gate=shared_gate), x)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx1, gx0, atol=1e-5, rtol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-5)


def test_partition_balances_tokens_and_skips_empty_experts():
    bounds = [0, 10, 10, 13, 30, 31]  # sizes 10, 0, 3, 17, 1
    parts = _partition(bounds, 2)
    assert sorted(e for p in parts for e in p) == [0, 2, 3, 4]
    loads = [sum(bounds[e + 1] - bounds[e] for e in p) for p in parts]
    assert sorted(loads) == [14, 17]


def test_auto_backend_resolves_to_grouped():
    """``auto`` is not a third implementation: it names the grouped back-end."""
    layer = _layer("auto")
    assert layer.backend == "grouped" and layer.run_experts is grouped_experts
    assert _layer("loop").run_experts is loop_experts
    assert resolve_backend("loop") == "loop" and resolve_backend("grouped") == "grouped"
    with pytest.raises(ConfigError, match="'backend'.*'fast'"):
        resolve_backend("fast")


def test_state_dict_keys_identical_across_backends():
    keys = {b: list(_layer(b).state_dict()) for b in ("loop", "grouped")}
    assert keys["loop"] == keys["grouped"]
    assert "experts.w_gate_up" in keys["loop"] and "router.linear.weight" in keys["loop"]


def test_gates_per_router_kind():
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(5))
    for router, scaling, total in (
        ("softmax_topk_renorm", 1.0, 1.0), ("sigmoid_topk", 2.5, 2.5)
    ):
        r = _layer("loop", router=router, routed_scaling=scaling).router(x)
        torch.testing.assert_close(r.gates.sum(-1), torch.full((50,), total))
    layer = _layer("loop")
    r = layer.router(x)
    probs = torch.softmax(layer.router.linear(x), -1)
    torch.testing.assert_close(r.gates, probs.gather(1, r.expert_idx))  # not renormalised
    assert bool((r.gates.sum(-1) < 1).all())
    assert torch.equal(r.expert_idx.sort(-1).values, probs.topk(K).indices.sort(-1).values)


def test_aux_loss_equals_analytic_value_for_uniform_routing():
    t = 64
    # Uniform probabilities: E·Σ f_i·(1/E) = Σ f_i = 1 whatever the load.
    for load in (torch.full((E,), t * K / E), torch.tensor([t * K] + [0.0] * (E - 1))):
        assert float(load_balancing_loss(torch.full((t, E), 1.0 / E), load)) == pytest.approx(1)
    # Fully collapsed routing (all probability and load on one expert) costs E.
    collapsed = torch.zeros(t, E)
    collapsed[:, 0] = 1.0
    assert float(load_balancing_loss(collapsed, torch.eye(E)[0] * t)) == pytest.approx(E)
    # Through the layer: a zero router gives uniform probabilities and logsumexp = log E.
    layer = _layer("loop", aux_loss_coef=0.01, z_loss_coef=0.001)
    with torch.no_grad():
        layer.router.linear.weight.zero_()
        _, aux, _ = layer(torch.randn(t, D))
    assert float(aux) == pytest.approx(0.01 * 1.0 + 0.001 * math.log(E) ** 2, rel=1e-6)


def test_z_loss_value_and_gradient():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    value = z_loss(logits)
    assert float(value.detach()) == pytest.approx((math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2)
    layer = _layer("loop", aux_loss_coef=0.0, z_loss_coef=0.001)
    _, aux, _ = layer(torch.randn(20, D))
    aux.backward()
    grad = layer.router.linear.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_aux_free_bias_drives_skewed_router_towards_balance():
    torch.manual_seed(0)
    layer = _layer("loop", router="sigmoid_topk", aux_loss_coef=0.0, z_loss_coef=0.0,
                   aux_free_bias_rate=0.02)
    v = torch.randn(D)
    v /= v.norm()
    with torch.no_grad():  # skew: experts 0 and 1 win almost every token
        layer.router.linear.weight[:2] += 3.0 * v
    x = torch.randn(512, D) + 2.0 * v
    layer.train()

    def imbalance() -> float:
        with torch.no_grad():
            return float(layer(x)[2]["imbalance"])

    start = imbalance()
    layer.router.load_since_update.zero_()
    for _ in range(300):
        with torch.no_grad():
            layer(x)
        layer.router.update_bias()
    end = imbalance()
    assert start > 3.0
    assert end < 1.5 and end < start / 2
    # The bias only selects: gates are the un-biased scores, normalised.
    r = layer.router(x)
    scores = torch.sigmoid(layer.router.linear(x)).gather(1, r.expert_idx)
    torch.testing.assert_close(r.gates, scores / scores.sum(-1, keepdim=True))


def test_update_bias_is_noop_without_rate_or_forward():
    layer = _layer("loop")
    layer.router.update_bias()
    assert layer.router.score_bias is None
    layer = _layer("loop", aux_free_bias_rate=0.1)
    layer.router.update_bias()
    assert float(layer.router.score_bias.abs().sum()) == 0


def test_capacity_drops_beyond_capacity_first_choices_first():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    kept = apply_capacity(idx, n_experts=4, capacity=2)
    # expert 0: first choices of tokens 0, 1 kept; token 2's first choice and token 3's
    # second choice dropped (marked E=4); expert 1 keeps both.
    assert kept.tolist() == [[0, 1], [0, 2], [4, 1], [3, 4]]
    layer = _layer("grouped", capacity_factor=0.5)
    assert layer.capacity(40) == math.ceil(0.5 * 40 * K / E)
    _, _, stats = layer(torch.randn(40, D))
    assert 0 < float(stats["dropped_fraction"]) < 1


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_topk"])
def test_router_slots_are_choices_in_order_so_capacity_keeps_first_choices(router):
    """Slot k holds each token's (k+1)-th choice. At E 64, K 8 an unsorted CPU ``topk``
    returns the choices in heap order, and the capacity limit (all first choices before any
    second choice) then dropped tokens' first choices while keeping their eighth."""
    torch.manual_seed(0)
    layer = MoELayer(d_model=D, n_experts=64, top_k=8, d_expert=8,
                     cfg=MoEConfig(router=router, capacity_factor=1.0))
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(1))
    routing = layer.router(x)
    scores = (torch.softmax if router == "softmax_topk" else lambda z, dim: torch.sigmoid(z))(
        layer.router.linear(x).float(), dim=-1)
    chosen = scores.gather(1, routing.expert_idx)
    assert bool((chosen[:, :-1] >= chosen[:, 1:]).all())  # best first
    kept = apply_capacity(routing.expert_idx, 64, layer.capacity(256))
    first = torch.bincount(routing.expert_idx[:, 0], minlength=64)
    assert int(first.max()) <= layer.capacity(256)  # room for every first choice ...
    assert bool((kept[:, 0] < 64).all())  # ... so none is dropped
    assert bool((kept == 64).any())  # while later choices are


def test_bf16_forward_backward_runs():
    layer = _layer("grouped").to(torch.bfloat16)
    x = torch.randn(30, D, dtype=torch.bfloat16, requires_grad=True)
    y, aux, _ = layer(x)
    (y.float().sum() + aux).backward()
    assert y.dtype == torch.bfloat16 and x.grad is not None
    assert layer.router.score_bias is None or layer.router.score_bias.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"router": "topk"}, "router"), ({"backend": "fast"}, "backend"),
     ({"capacity_factor": 0.0}, "capacity_factor"), ({"aux_loss_coef": -1}, "aux_loss_coef"),
     ({"z_loss_coef": float("nan")}, "z_loss_coef"), ({"routed_scaling": 0}, "routed_scaling"),
     ({"aux_free_bias_rate": -0.1}, "aux_free_bias_rate")],
)
def test_bad_moe_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        MoEConfig(**kwargs)


def test_moe_config_from_dict_rejects_unknown_keys():
    assert MoEConfig.from_dict({"router": "sigmoid_topk"}).router == "sigmoid_topk"
    with pytest.raises(ConfigError, match="'routr'"):
        MoEConfig.from_dict({"routr": "x"})


@pytest.mark.skipif(not hasattr(torch.nn.functional, "grouped_mm"), reason="no grouped_mm")
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
@pytest.mark.parametrize("shared_gate", [True, False])
def test_grouped_mm_path_logic_on_cpu(monkeypatch, capacity_factor, shared_gate):
    """The CUDA path's gather/offsets/masks/scatter, run through CPU ``grouped_mm``. Rows
    past ``offs[-1]``, which the kernel leaves unwritten in both passes, are filled with NaN
    here: none may reach the output or a gradient (a dropped row's gate gradient once was
    ``0 · NaN``, seen as a NaN row of x.grad when the heap held NaN)."""
    import moescale.model.moe_backends as mb

    real = mb._GROUPED_MM

    class Unwritten(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, offs):
            ctx.save_for_backward(a, b, offs)
            out = real(a, b, offs=offs)
            out[int(offs[-1]):] = float("nan")
            return out

        @staticmethod
        def backward(ctx, grad):
            a, b, offs = ctx.saved_tensors
            with torch.enable_grad():
                a_, b_ = a.detach().requires_grad_(), b.detach().requires_grad_()
                da, db = torch.autograd.grad(real(a_, b_, offs=offs), (a_, b_), grad)
            da = da.clone()
            da[int(offs[-1]):] = float("nan")
            return da, db, None

    x = torch.randn(40, D, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(mb, "grouped_mm_usable", lambda x, w: True)
    monkeypatch.setattr(mb, "_GROUPED_MM", lambda a, b, offs: Unwritten.apply(a, b, offs))
    layer = _layer("grouped", capacity_factor=capacity_factor, shared_gate=shared_gate)
    _starve(layer, [3])
    ref_layer = _layer("loop", capacity_factor=capacity_factor, shared_gate=shared_gate)
    _starve(ref_layer, [3])
    ref = _run(ref_layer, x)
    got = _run(layer, x)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared_gate", [True, False])
def test_backends_agree_under_bf16_autocast(shared_gate):
    """The ungated shared expert, run by the back-end, gets the autocast dtype too."""
    x = torch.randn(48, D, generator=torch.Generator().manual_seed(7))
    outs = []
    for backend in ("loop", "grouped"):
        layer = _layer(backend, shared_gate=shared_gate)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, aux, _ = layer(x)
        (y.float().sum() + aux).backward()
        outs.append((y.float(), layer.experts.w_gate_up.grad, layer.shared.gate_up.weight.grad))
    assert outs[1][1].dtype == outs[1][2].dtype == torch.float32  # fp32 master weights
    torch.testing.assert_close(outs[1][2], outs[0][2], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=3e-2, rtol=3e-2)


def test_gather_and_combine_rows_are_adjoint_and_exact():
    """The CUDA path's atomic-free dispatch/combine: gradcheck in float64, and the
    combine equals the index_add scatter it replaces."""
    from moescale.model.moe_backends import _CombineRows, _GatherRows, _inverse

    gen = torch.Generator().manual_seed(3)
    t, k, d = 7, 3, 5
    order = torch.randperm(t * k, generator=gen)
    token = order // k
    inv = _inverse(order)
    x = torch.randn(t, d, dtype=torch.float64, generator=gen, requires_grad=True)
    ys = torch.randn(t * k, d, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: _GatherRows.apply(a, token, inv, k), (x,))
    assert torch.autograd.gradcheck(lambda a: _CombineRows.apply(a, token, inv, k), (ys,))
    torch.testing.assert_close(_GatherRows.apply(x, token, inv, k), x[token])
    scatter = torch.zeros(t, d, dtype=torch.float64).index_add(0, token, ys)
    torch.testing.assert_close(_CombineRows.apply(ys, token, inv, k), scatter)


def test_permute_gradient_is_the_inverse_gather():
    """The sorted gates: ``v[order]`` with the backward ``grad[inv]``, against autograd's
    own backward of indexing, gradcheck and gradgradcheck in float64."""
    from moescale.model.moe_backends import _inverse, _Permute

    gen = torch.Generator().manual_seed(4)
    order = torch.randperm(23, generator=gen)
    inv = _inverse(order)
    torch.testing.assert_close(order[inv], torch.arange(23))
    v = torch.randn(23, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(23, dtype=torch.float64, generator=gen)
    (ours,) = torch.autograd.grad((_Permute.apply(v, order, inv) * w).sum(), v)
    (ref,) = torch.autograd.grad((v[order] * w).sum(), v)
    assert torch.equal(ours, ref)
    assert torch.autograd.gradcheck(lambda a: _Permute.apply(a, order, inv), (v,))
    assert torch.autograd.gradgradcheck(lambda a: _Permute.apply(a, order, inv), (v,))
