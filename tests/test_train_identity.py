"""Train-config schema 2 (nested MoE options) and the one run identity of planner and trainer."""

from __future__ import annotations

import json
import warnings

import pytest

from moescale.errors import ConfigError
from moescale.model.config import MoEConfig
from moescale.spec import ModelSpec
from moescale.sweep.planner import run_key
from moescale.train import TrainConfig, run_hash, run_identity
from moescale.train.config import load_run_config
from moescale.train.identity import upgrade_identity

DENSE = ModelSpec(name="tiny-dense", d_model=32, n_layers=2, n_heads=2, vocab_size=257, d_ffn=64)
MOE = ModelSpec(d_model=32, n_layers=2, n_heads=2, vocab_size=257, n_experts=8, top_k=2,
                n_shared_experts=1, d_expert=16)
MODEL_TOML = "[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nvocab_size = 257\nd_ffn = 64\n"


def test_moe_options_nest_in_train_moe_table(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(MODEL_TOML + "[train]\ncompute = 1e9\n[train.moe]\nrouter = 'sigmoid_topk'\n"
                    "routed_scaling = 2.5\nbackend = 'loop'\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, cfg = load_run_config(path, {"moe": {"aux_loss_coef": 0.0, "z_loss_coef": None}})
    assert cfg.moe == MoEConfig(router="sigmoid_topk", routed_scaling=2.5, backend="loop",
                                aux_loss_coef=0.0)
    assert TrainConfig(compute=1e9).moe == MoEConfig()  # the [EL] recipe by default
    assert TrainConfig(compute=1e9, moe={"capacity_factor": 1.25}).moe.capacity_factor == 1.25


def test_schema1_flat_keys_are_upgraded_with_a_warning(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(MODEL_TOML + "[train]\ncompute = 1e9\nrouter = 'sigmoid_topk'\n"
                    "moe_backend = 'loop'\n")
    with pytest.warns(FutureWarning, match=r"router -> moe\.router, moe_backend -> moe\.backend"):
        _, cfg = load_run_config(path)
    assert (cfg.moe.router, cfg.moe.backend) == ("sigmoid_topk", "loop")
    with pytest.raises(ConfigError, match="conflicts with moe.router"):
        TrainConfig.from_dict({"compute": 1e9, "router": "sigmoid_topk",
                               "moe": {"router": "softmax_topk"}})


def test_identity_drops_defaults_and_non_numeric_fields():
    cfg = TrainConfig(compute=1e10, seq_len=64, seed=1, checkpoint_every_s=5.0,
                      extra={"sweep": "x"}, moe={"router": "sigmoid_topk"})
    ident = run_identity(DENSE.replace(name="other"), cfg)
    assert ident["train"] == {"compute": 1e10, "seq_len": 64, "seed": 1,
                              "moe": {"router": "sigmoid_topk"}}
    assert "name" not in ident["spec"] and ident["spec"]["d_ffn"] == 64
    assert run_hash(DENSE, cfg.replace(weight_decay=0.1)) == run_hash(DENSE, cfg)  # default
    assert run_hash(DENSE, cfg.replace(weight_decay=0.2)) != run_hash(DENSE, cfg)


def test_planner_key_is_the_run_hash_and_unchanged_for_default_recipes():
    cfg = TrainConfig(compute=1e10, seq_len=64, batch_tokens=2048, seed=1)
    assert run_key(MOE, cfg) == run_hash(MOE, cfg)
    # computed by the schema-1 planner (moescale before this change): store keys stay valid
    assert run_key(MOE, cfg) == "59cb566adf101aef"


def test_schema1_identity_is_upgraded():
    """A schema-1 folder stored every field, defaults included, with flat MoE keys."""
    cfg = TrainConfig(compute=1e10, seq_len=64, moe={"router": "sigmoid_topk"})
    old_train = cfg.to_dict()
    moe = old_train.pop("moe")
    old_train.update({"router": moe["router"], "routed_scaling": moe["routed_scaling"],
                      "aux_loss_coef": moe["aux_loss_coef"], "z_loss_coef": moe["z_loss_coef"],
                      "aux_free_bias_rate": moe["aux_free_bias_rate"],
                      "capacity_factor": moe["capacity_factor"], "moe_backend": moe["backend"]})
    for skip in ("checkpoint_every_s", "checkpoint_every_steps", "extra", "cache_dir"):
        old_train.pop(skip)
    old_spec = {k: v for k, v in MOE.to_dict().items() if k not in ("name", "extra")}
    old = json.loads(json.dumps({"spec": old_spec, "train": old_train}))
    assert upgrade_identity(old) == run_identity(MOE, cfg)
