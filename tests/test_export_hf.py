"""``moescale export --format hf``: transformers loads the folder and computes the same logits.

Two runs are trained for real (a dense one → Llama, an MoE one → Qwen2-MoE); the other
families are checked on models built and saved the way the trainer saves its final
weights (``save_weights`` + ``result.json`` + the run record), with weights drawn large
enough (std 0.05, random norm gains and biases) that the logits are far from zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from moescale.cli import main  # noqa: E402
from moescale.errors import ConfigError, DataError  # noqa: E402
from moescale.export import export_hf, hf_family  # noqa: E402
from moescale.model import MoEConfig, build_model  # noqa: E402
from moescale.spec import ModelSpec  # noqa: E402
from moescale.train import TrainConfig, train  # noqa: E402
from moescale.train.checkpoint import load_weights, save_weights  # noqa: E402
from moescale.train.trainer import RESULT_NAME, RUN_CONFIG_NAME  # noqa: E402

BASE = dict(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=257, d_ffn=64,
            rope_theta=5e5)
MOE = dict(n_experts=8, top_k=2, d_expert=16)


def _logits_agree(run_dir: Path, out: Path, spec: ModelSpec, moe: MoEConfig) -> float:
    """Max |Δlogits| between moescale's model (run weights) and transformers' (export)."""
    model = build_model(spec, moe)
    model.load_state_dict(load_weights(run_dir / "model.pt"))
    model.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens).logits
        theirs = hf(tokens).logits
    assert ours.std() > 0.05, "logits too small for a meaningful comparison"
    n_ours = sum(p.numel() for p in model.parameters())
    n_theirs = sum(p.numel() for p in hf.parameters())
    assert n_theirs - n_ours == (spec.n_moe_layers * spec.d_model  # zero-width shared gate
                                 if hf.config.model_type == "qwen2_moe"
                                 and not spec.n_shared_experts else 0)
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize(
    ("spec", "train_kw", "family"),
    [
        (ModelSpec(name="dense", **BASE), {}, "llama"),
        (ModelSpec(name="moe-q2", **BASE, **MOE, n_shared_experts=1, shared_expert_gate=True,
                   n_dense_layers=1, qkv_bias=True), {}, "qwen2_moe"),
    ],
    ids=["dense-llama", "moe-qwen2moe"],
)
def test_trained_run_exports_exactly(spec, train_kw, family, tmp_path, one_torch_thread,
                                     token_cache):
    run = tmp_path / "run"
    cfg = TrainConfig(compute=3e8, seq_len=32, cache_dir=token_cache,
                      learning_rate=3e-3, **train_kw)
    assert train(spec, cfg, run)["status"] == "completed"
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run), "--format", "hf", "--out", str(out)])
    assert exc.value.code in (0, None)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    assert (out / "model.safetensors").is_file()
    assert _logits_agree(run, out, spec, cfg.moe) <= 1e-5


def _fake_run(run: Path, spec: ModelSpec, cfg: TrainConfig, status="completed") -> MoEConfig:
    """A run folder as the trainer leaves it, with large random weights."""
    moe = cfg.moe
    model = build_model(spec, moe, init_std=0.05)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.copy_(1.0 * name.endswith("weight") + 0.2 * torch.randn(p.shape, generator=gen))
    run.mkdir(parents=True)
    save_weights(run, model.state_dict())
    (run / RUN_CONFIG_NAME).write_text(json.dumps(
        {"spec": spec.to_dict(), "train": cfg.to_dict(), "plan": {"seq_len": 64}}))
    (run / RESULT_NAME).write_text(json.dumps({"status": status}))
    return moe


@pytest.mark.parametrize(
    ("spec", "router", "family"),
    [
        (ModelSpec(name="q3", **BASE, qk_norm="head"), "softmax_topk", "qwen3"),
        (ModelSpec(name="tied", **BASE, tie_embeddings=True, qkv_bias=True, o_bias=True),
         "softmax_topk", "llama"),
        (ModelSpec(name="mix", **BASE, **MOE), "softmax_topk_renorm", "mixtral"),
        (ModelSpec(name="q3moe", **BASE, **MOE, qk_norm="head", moe_layers=(0, 2)),
         "softmax_topk", "qwen3_moe"),
        (ModelSpec(name="q2moe-noshared", **BASE, **MOE, n_dense_layers=1),
         "softmax_topk_renorm", "qwen2_moe"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_family_round_trips(spec, router, family, tmp_path):
    cfg = TrainConfig(compute=1e9, moe={"router": router})
    moe = _fake_run(tmp_path / "run", spec, cfg)
    done = export_hf(tmp_path / "run", tmp_path / "hf")
    assert done.model_type == family
    assert _logits_agree(tmp_path / "run", tmp_path / "hf", spec, moe) <= 1e-5


@pytest.mark.parametrize(
    ("changes", "router", "feature"),
    [
        ({**MOE, "n_shared_experts": 1}, "softmax_topk", "ungated shared experts"),
        ({**MOE}, "sigmoid_topk", "router='sigmoid_topk'"),
        ({"sliding_window": 8}, "softmax_topk", "sliding_window=8"),
        ({"rope_fraction": 0.5}, "softmax_topk", "partial RoPE"),
        ({"qk_norm": "full"}, "softmax_topk", "qk_norm='full'"),
    ],
)
def test_unrepresentable_spec_is_refused_naming_the_feature(changes, router, feature):
    spec = ModelSpec(**{**BASE, **changes})
    with pytest.raises(ConfigError, match=r"cannot export") as exc:
        hf_family(spec, TrainConfig(compute=1e9, moe={"router": router}).moe)
    assert feature in str(exc.value)


def test_cli_refusals_exit_2(tmp_path, capsys):
    spec = ModelSpec(name="d", **BASE)
    _fake_run(tmp_path / "failed", spec, TrainConfig(compute=1e9), status="failed")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    _fake_run(tmp_path / "ok", spec, TrainConfig(compute=1e9))
    cases = [
        (["export", str(tmp_path / "failed"), "--out", str(tmp_path / "o1")], "not finished"),
        (["export", str(tmp_path / "ok"), "--out", str(busy)], "not empty"),
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")], "does not exist"),
        (["export", str(tmp_path / "ok"), "--format", "gguf", "--out", str(tmp_path / "o3")],
         "'--format' must be one of hf"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_unexpected_weights_are_refused(tmp_path):
    spec = ModelSpec(name="d", **BASE)
    _fake_run(tmp_path / "run", spec, TrainConfig(compute=1e9))
    sd = load_weights(tmp_path / "run" / "model.pt")
    sd["extra.weight"] = torch.zeros(2)
    (tmp_path / "run" / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "run" / "model.pt")
    with pytest.raises(DataError, match="unexpected weight"):
        export_hf(tmp_path / "run", tmp_path / "hf")
