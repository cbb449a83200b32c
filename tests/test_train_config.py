"""TrainConfig validation, [EL] Eq. 3 defaults, plan resolution and LR schedules."""

from __future__ import annotations

import math

import pytest

from moescale.errors import ConfigError
from moescale.spec import ModelSpec, flops_per_token
from moescale.train import TrainConfig, el_batch_opt, el_lr_opt, lr_at, resolve_plan
from moescale.train.config import load_run_config

TINY = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=257, d_ffn=64)


def test_el_eq3_check_values():
    # LAWS.md §3: C = 1e20 gives lr 1.013e-3 and B 1.35e6 tokens ([EL] Eq. 3)
    assert el_lr_opt(1e20) == pytest.approx(1.013e-3, rel=1e-3)
    assert el_batch_opt(1e20) == pytest.approx(1.35e6, rel=5e-3)
    # independent recomputation of the power laws
    assert el_lr_opt(1e12) == pytest.approx(1.1576 * 1e12**-0.1529, rel=1e-12)
    assert el_batch_opt(1e12) == pytest.approx(0.0694 * 1e12**0.3644, rel=1e-12)


@pytest.mark.parametrize("compute", [3e8, 1e9, 7.7e9, 1e11, 1e13])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_spends_compute_within_half_a_batch(compute, world):
    plan = resolve_plan(TINY, TrainConfig(compute=compute, seq_len=32), world_size=world)
    m = flops_per_token(TINY, convention="ling", seq_len=32)
    assert plan.flops_per_token == m
    assert plan.tokens == plan.n_steps * plan.batch_size * 32
    assert plan.flops == pytest.approx(plan.tokens * m)
    if compute >= plan.batch_tokens * m / 2:
        assert abs(plan.flops - compute) <= plan.batch_tokens * m / 2 + 1e-6
    assert plan.batch_size % world == 0
    per_rank = plan.batch_size // world
    assert plan.micro_batch_size * plan.grad_accum == per_rank


def test_plan_uses_eq3_and_clamps_small_batches():
    cfg = TrainConfig(compute=1e9, seq_len=256)
    plan = resolve_plan(TINY, cfg)
    assert el_batch_opt(1e9) < 256  # the law asks for less than one sequence here
    assert plan.batch_size == 1 and any("clamped" in n for n in plan.notes)
    assert plan.learning_rate == pytest.approx(el_lr_opt(1e9))
    cfg = TrainConfig(compute=1e13, seq_len=32)
    plan = resolve_plan(TINY, cfg)
    assert plan.batch_size == round(el_batch_opt(1e13) / 32)


def test_plan_explicit_values_and_micro_batches():
    cfg = TrainConfig(compute=1e10, seq_len=32, batch_tokens=32 * 12, micro_batch_size=5,
                      learning_rate=3e-3)
    plan = resolve_plan(TINY, cfg, world_size=2)
    assert plan.batch_size == 12 and plan.learning_rate == 3e-3
    assert plan.micro_batch_size == 3 and plan.grad_accum == 2  # 6 per rank, 5 -> 3
    assert any("micro_batch_size" in n for n in plan.notes)


def test_plan_splits_a_batch_without_a_useful_divisor_into_near_equal_micro_batches():
    """79 sequences of 256 tokens under the 64-sequence cap: no divisor but 1, so two
    micro-batches of 40 and 39 (and a note); 80 keeps the divisor rule, 2 of 40, silently."""
    prime = resolve_plan(TINY, TrainConfig(compute=1e15, seq_len=256, batch_tokens=79 * 256))
    assert (prime.micro_batch_size, prime.grad_accum) == (40, 2)
    assert any("the last 39" in n and "no divisor between 2 and 64" in n for n in prime.notes)
    even = resolve_plan(TINY, TrainConfig(compute=1e15, seq_len=256, batch_tokens=80 * 256))
    assert (even.micro_batch_size, even.grad_accum) == (40, 2)
    assert not any("divisor" in n for n in even.notes)
    whole = resolve_plan(TINY, TrainConfig(compute=1e15, seq_len=256, batch_tokens=79 * 256),
                         micro_batch_tokens=79 * 256)
    assert (whole.micro_batch_size, whole.grad_accum) == (79, 1) and not whole.notes
    big = resolve_plan(TINY, TrainConfig(compute=1e15, seq_len=256, batch_tokens=257 * 256))
    assert (big.micro_batch_size, big.grad_accum) == (52, 5)  # 4 x 52 + 49


def test_wsd_schedule_shape():
    cfg = TrainConfig(compute=1e10, seq_len=32, batch_tokens=32, learning_rate=1.0,
                      warmup_fraction=0.01, decay_fraction=0.1)
    plan = resolve_plan(TINY, cfg)
    n = plan.n_steps
    assert n > 300
    lrs = [lr_at(i, plan, cfg) for i in range(n)]
    warm = math.ceil(0.01 * n)
    assert lrs[0] == pytest.approx(1 / warm)
    assert lrs[warm - 1] == pytest.approx(1.0)
    decay_start = n - math.ceil(0.1 * n)
    assert all(v == 1.0 for v in lrs[warm:decay_start])
    assert lrs[-1] == pytest.approx(0.1)  # decays to 10% of the peak ([EL])
    assert all(a >= b for a, b in zip(lrs[decay_start - 1 :], lrs[decay_start:], strict=False))


def test_cosine_schedule_ends_at_floor():
    cfg = TrainConfig(compute=1e10, seq_len=32, batch_tokens=32, learning_rate=2.0,
                      schedule="cosine", min_lr_ratio=0.1)
    plan = resolve_plan(TINY, cfg)
    lrs = [lr_at(i, plan, cfg) for i in range(plan.n_steps)]
    assert max(lrs) == pytest.approx(2.0, rel=1e-3)
    assert lrs[-1] == pytest.approx(0.2)
    mid = plan.n_steps // 2
    assert 0.2 < lrs[mid] < 2.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"compute": 0}, "compute"),
        ({"compute": -1e9}, "compute"),
        ({"compute": 1e9, "seq_len": 0}, "seq_len"),
        ({"compute": 1e9, "schedule": "linear"}, "schedule"),
        ({"compute": 1e9, "tokenizer": "sentencepiece"}, "tokenizer"),
        ({"compute": 1e9, "dtype": "float16"}, "dtype"),
        ({"compute": 1e9, "device": "tpu"}, "device"),
        ({"compute": 1e9, "epochs": 0}, "epochs"),
        ({"compute": 1e9, "moe": {"router": "hash"}}, "router"),
        ({"compute": 1e9, "moe": {"routing": "x"}}, "routing"),
        ({"compute": 1e9, "warmup_fraction": 0.5, "decay_fraction": 0.6}, "warmup_fraction"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"option\(s\) 'lr_peak'; allowed: .*compute"):
        TrainConfig.from_dict({"compute": 1e9, "lr_peak": 1e-3})


def test_load_run_config_train_table_and_overrides(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        "[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nvocab_size = 257\nd_ffn = 64\n"
        "[train]\ncompute = 2e9\nseq_len = 64\nseed = 3\n"
    )
    spec, cfg = load_run_config(path, {"seq_len": 32, "seed": None})
    assert spec.d_model == 32
    assert (cfg.compute, cfg.seq_len, cfg.seed) == (2e9, 32, 3)
    path.write_text("[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nvocab_size = 257\n"
                    "d_ffn = 64\n")
    with pytest.raises(ConfigError, match="compute"):
        load_run_config(path, {})


def test_public_surface():
    import moescale.train as t

    assert sorted(t.__all__) == sorted([
        "TRAIN_SCHEMA_VERSION", "TrainConfig", "TrainPlan", "el_batch_opt", "el_lr_opt",
        "lr_at", "resolve_plan", "run_hash", "run_identity", "train", "train_step",
    ])
    for name in t.__all__:
        assert getattr(t, name) is not None


def test_user_fitted_hyperparameter_laws():
    cfg = TrainConfig(compute=1e12, seq_len=32, lr_law=[2.0, -0.2], batch_law=(0.5, 0.3))
    plan = resolve_plan(TINY, cfg)
    assert plan.learning_rate == pytest.approx(2.0 * 1e12**-0.2)
    assert plan.batch_size == round(0.5 * 1e12**0.3 / 32)
    with pytest.raises(ConfigError, match="lr_law"):
        TrainConfig(compute=1e9, lr_law=(-1.0, 0.1))


def test_uneven_micro_batches_give_the_one_pass_gradient():
    """A step over 7 sequences in micro-batches of 3, 3 and 1 (each weighted by its rows)
    has the loss and gradients of one pass over all 7 (a dense model: an MoE's balance loss
    is a per-batch statistic; the loss itself is taken in fp32)."""
    import torch

    from moescale.train import parallel
    from moescale.train.setup import build_training, runtime_settings
    from moescale.train.step import train_step

    spec = ModelSpec(d_model=16, n_layers=1, n_heads=2, vocab_size=37, d_ffn=32)
    cfg = TrainConfig(compute=1e9, seq_len=12, dtype="float32", deterministic=True)
    ctx = parallel.init_distributed("cpu")
    gen = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 37, (7, 13), generator=gen)
    x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
    grads, results = [], []
    for micro in (7, 3):
        parts = build_training(spec, cfg, ctx, runtime_settings(cfg, ctx))
        parts.model.double()
        parts.optimizer.step = lambda: None  # keep the gradients: compare them
        parts.optimizer.zero_grad = lambda set_to_none=True: None
        results.append(train_step(parts, x, y, lr=0.0, micro_batch_size=micro, grad_clip=0))
        grads.append({n: p.grad.clone() for n, p in parts.model.named_parameters()})
    one, split = results
    assert split.loss == pytest.approx(one.loss, rel=1e-6)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-8, msg=name)
