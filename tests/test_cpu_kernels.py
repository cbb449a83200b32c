"""The compiled CPU segment loops (moescale.model.cpu_kernels): they build where a compiler
is present, match the reference loop to float64 rounding, and fall back with a warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import moescale.model.cpu_kernels as ck
import moescale.model.moe_backends as mb
from moescale.errors import ConfigError
from moescale.model import MoEConfig, MoELayer
from moescale.model.ffn import FeedForward
from moescale.model.moe_backends import _schedule, grouped_experts, loop_experts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _compiler_present() -> bool:
    try:
        import ninja  # noqa: F401
    except ImportError:
        return False
    return shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture
def segments(monkeypatch):
    """Force the per-expert segment path (no padded bmm) and the worker threads."""
    monkeypatch.setattr(mb, "_PADDED_MAX_WORK", -1)
    monkeypatch.setattr(mb, "_PARALLEL_MIN_WORK", 1)


@pytest.mark.skipif(not _compiler_present(), reason="no C++ compiler or ninja here")
def test_extension_builds_where_a_compiler_is_present(monkeypatch):
    """With a compiler the extension must build: a broken build must not hide behind the
    Python fallback (which is correct but slower)."""
    monkeypatch.delenv(ck.KERNELS_ENV, raising=False)
    assert ck.kernels_status() == "compiled"
    assert hasattr(ck.cpu_kernels(), "segment_backward")


def _routed(x, w_gate_up, w_down, expert_idx, gates, fn, shared=None):
    class Experts:  # the attributes the back-ends read
        n_experts = w_gate_up.shape[0]

    Experts.w_gate_up, Experts.w_down = w_gate_up, w_down
    return fn(x, expert_idx, gates, Experts, shared=shared)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", ["small", "chunked"])
@pytest.mark.parametrize("with_shared", [False, True])
def test_compiled_segments_match_the_loop_in_float64(segments, monkeypatch, threads, shape,
                                                     with_shared):
    """Output and every gradient (x, gates, both weights, the shared expert's) of the compiled
    loops against the reference loop in float64, with dropped assignments (index E), experts
    that get no token and a non-contiguous output gradient. ``chunked``: D 2048, so segments
    (and the shared expert's rows) run in several chunks of 64 rows. At two workers the
    smallest experts form the dynamic tail (:func:`_schedule`)."""
    if not _compiler_present():
        pytest.skip("no C++ compiler or ninja here")
    monkeypatch.delenv(ck.KERNELS_ENV, raising=False)
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    t, d, f, e, k = (37, 24, 10, 6, 2) if shape == "small" else (300, 2048, 8, 5, 2)
    x = torch.randn(t, d, generator=g, dtype=torch.float64)
    w_gu = torch.randn(e, 2 * f, d, generator=g, dtype=torch.float64) / d**0.5
    w_d = torch.randn(e, d, f, generator=g, dtype=torch.float64) / f**0.5
    ws_gu = torch.randn(2 * (f + 3), d, generator=g, dtype=torch.float64) / d**0.5
    ws_d = torch.randn(d, f + 3, generator=g, dtype=torch.float64) / f**0.5
    idx = torch.randint(0, e - 1, (t, k), generator=g)  # expert e-1 gets no token
    idx[::5, 1] = e  # dropped by a capacity limit
    gates = torch.rand(t, k, generator=g, dtype=torch.float64)
    weight = torch.randn(d, t, generator=g, dtype=torch.float64)
    grads = []
    for fn in (loop_experts, grouped_experts):
        leaves = [a.clone().requires_grad_(True) for a in (x, w_gu, w_d, gates)]
        shared = None
        if with_shared:  # a FeedForward of width F + 3 (another width than the experts')
            shared = FeedForward(d, f + 3).double()
            with torch.no_grad():
                shared.gate_up.weight.copy_(ws_gu)
                shared.down.weight.copy_(ws_d)
        y = _routed(leaves[0], leaves[1], leaves[2], idx, leaves[3], fn, shared)
        (y.t() * weight).sum().backward()  # dL/dy = weight.t(): not contiguous
        extra = [shared.gate_up.weight.grad, shared.down.weight.grad] if shared else []
        grads.append([y.detach(), *(a.grad for a in leaves), *extra])
    assert ck.cpu_kernels() is not None
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert grads[1][2][e - 1].abs().sum() == 0  # the idle expert's weight gradient


def test_two_workers_with_a_tail_are_bitwise_reproducible(segments, monkeypatch):
    """Which worker claims a tail expert changes from call to call; the output and every
    gradient must not (CPU training promises a bit-identical resume)."""
    if not _compiler_present():
        pytest.skip("no C++ compiler or ninja here")
    monkeypatch.delenv(ck.KERNELS_ENV, raising=False)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = MoELayer(d_model=64, n_experts=16, top_k=4, d_expert=32, n_shared=1, d_shared=32,
                     cfg=MoEConfig(backend="grouped"))
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(512, 64)
    runs = []
    for _ in range(6):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(xi)[0]
        y.square().sum().backward()
        runs.append([y.detach(), xi.grad, *(p.grad for p in layer.parameters())])
    for run in runs[1:]:
        for got, want in zip(run, runs[0], strict=True):
            assert torch.equal(got, want)


def test_weight_gradients_without_an_input_gradient(segments, monkeypatch):
    """x not requiring grad (no dx, so no tail rows to add): the weight and gate gradients
    of the compiled loops, two workers with a tail and the shared expert, match the loop."""
    if not _compiler_present():
        pytest.skip("no C++ compiler or ninja here")
    monkeypatch.delenv(ck.KERNELS_ENV, raising=False)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    grads = []
    for backend in ("loop", "grouped"):
        torch.manual_seed(0)
        layer = MoELayer(d_model=32, n_experts=12, top_k=3, d_expert=16, n_shared=1,
                         d_shared=24, cfg=MoEConfig(backend=backend)).double()
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(300, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y, aux, _ = layer(x)
        (y.square().sum() + aux).backward()
        grads.append({n: p.grad for n, p in layer.named_parameters()})
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, rtol=1e-10, atol=1e-12)


def test_schedule_tail_is_the_smallest_experts_never_the_shared_one():
    bounds = [0, 50, 50, 53, 90, 91, 140, 141, 200, 300]  # 9 experts, one empty
    sizes = [*bounds, bounds[-1] + 400]  # index 9: the shared expert, 400 rows
    parts, tail = _schedule(sizes, 2, eligible=9)
    assert tail == [4, 6]  # the two smallest non-empty (1 row each): 8 // 4 = 2
    static = sorted(e for p in parts for e in p)
    assert static == [0, 2, 3, 5, 7, 8, 9]  # every other non-empty one, the shared one once
    assert _schedule(sizes, 1, eligible=9) == ([[0, 2, 3, 4, 5, 6, 7, 8, 9]], [])
    parts, tail = _schedule([0, 400, 800], 2, eligible=2)  # too few experts for a tail
    assert tail == [] and sorted(map(sorted, parts)) == [[0], [1]]


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv(ck.KERNELS_ENV, "python")
    assert ck.cpu_kernels() is None and ck.kernels_status() == "python"


def test_unknown_environment_value_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(ck.KERNELS_ENV, "pyhton")
    with pytest.raises(ConfigError, match="MOESCALE_CPU_KERNELS must be one of compiled, "
                                          "python; got 'pyhton'"):
        ck.cpu_kernels()


def test_bench_reports_which_loop_ran(monkeypatch):
    """``cpu_kernels`` is None where the padded bmm path runs, else the loop in use."""
    from moescale.model.bench import bench_moe_layer

    small = bench_moe_layer(experts=4, top_k=2, d_model=16, d_expert=8, tokens=32, repeats=1,
                            loop=False)
    assert small["cpu_kernels"] is None
    monkeypatch.setenv(ck.KERNELS_ENV, "python")
    big = bench_moe_layer(experts=4, top_k=2, d_model=64, d_expert=32, tokens=2048,
                          repeats=1, loop=False)
    assert big["cpu_kernels"] == "python"


def test_failed_build_warns_with_the_cause_and_falls_back(segments, monkeypatch):
    """A failed build names the compiler's error line; the layer then runs the Python loop
    with the same results as the reference loop."""
    import torch.utils.cpp_extension as cpp

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'x': [1/2] c++ ...\n"
                           "segment_swiglu.cpp:1:1: error: boom\nninja: build stopped")

    monkeypatch.delenv(ck.KERNELS_ENV, raising=False)
    monkeypatch.setattr(ck, "_cache", {})
    monkeypatch.setattr(cpp, "load", broken)
    with pytest.warns(RuntimeWarning, match="could not be built.*error: boom.*Python loop"):
        assert ck.cpu_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call
        assert ck.cpu_kernels() is None
    torch.manual_seed(0)
    layers = [MoELayer(d_model=16, n_experts=4, top_k=2, d_expert=8,
                       cfg=MoEConfig(backend=b)) for b in ("loop", "grouped")]
    for p in layers[0].parameters():
        torch.nn.init.normal_(p, std=0.1)
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layers[1](x)[0], layers[0](x)[0], rtol=1e-5, atol=1e-6)


def test_torch_compile_runs_the_segments_eagerly_without_warnings(segments):
    """Under ``torch.compile`` the segment path is left out of the graph (its bounds are
    host values and its loops an extension): same numbers, and no dynamo warning about an
    untraceable builtin."""
    torch.manual_seed(0)
    layer = MoELayer(d_model=32, n_experts=4, top_k=2, d_expert=16, n_shared=1, d_shared=16,
                     cfg=MoEConfig(backend="grouped"))
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(64, 32, requires_grad=True)
    y0 = layer(x)[0]
    y0.square().sum().backward()
    g0, x.grad = x.grad, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = torch.compile(layer)(x)[0]
        y1.square().sum().backward()
    assert [str(w.message) for w in caught if "ynamo" in str(w.message)] == []
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, g0, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_processes_building_at_once_share_one_build(tmp_path):
    """Sweep workers start together: two fresh processes needing the extension at the same
    time in an empty extensions directory both get the compiled loops (one builds, the other
    waits on torch's lock) and one build lands."""
    if not _compiler_present():
        pytest.skip("no C++ compiler or ninja here")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop(ck.KERNELS_ENV, None)
    code = "from moescale.model.cpu_kernels import kernels_status; print(kernels_status())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == ["compiled", "compiled"], outs
    assert len([d for d in tmp_path.iterdir() if d.name.startswith("moescale_segment_")]) == 1
