"""Export a finished run to a Hugging Face transformers folder (``config.json`` +
``model.safetensors``) that ``AutoModelForCausalLM.from_pretrained`` loads.

A spec is exported only to a family that computes *exactly* the same function (the
export test compares logits to 1e-5 in fp32):

========================  =====================================================================
family (``model_type``)   represents
========================  =====================================================================
``llama``                 dense; no QK-norm; q/k/v/o biases all or none
``qwen3``                 dense; per-head QK-norm (``qk_norm='head'``); q/k/v/o biases all or none
``mixtral``               MoE in every layer; no shared experts; renormalised softmax top-k
``qwen3_moe``             MoE (leading/explicit dense layers allowed); per-head QK-norm; no
                          shared experts; softmax top-k, renormalised or not
``qwen2_moe``             MoE (dense layers allowed); no QK-norm; q/k/v biases or none, no o
                          bias; shared experts only with a sigmoid gate; softmax top-k
========================  =====================================================================

Refused, naming the feature: sliding windows, partial RoPE, MLA, attention sinks, expert or
router biases, the sigmoid router, routed scaling ≠ 1, a capacity factor (transformers'
MoE layers are dropless), a non-zero aux-loss-free selection bias, and ungated shared
experts (the [EL] recipe: no transformers family with GQA adds an ungated shared expert to
a softmax router). The weights use the transformers ≥ 5 layout (fused expert tensors
``experts.gate_up_proj`` [E, 2F, D], ``experts.down_proj`` [E, D, F]).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moescale.errors import ConfigError, DataError
from moescale.model.config import MoEConfig
from moescale.model.transformer import RMSNorm
from moescale.spec import ModelSpec
from moescale.spec.io import atomic_write
from moescale.train.checkpoint import MODEL_NAME, SAFETENSORS_NAME, load_weights
from moescale.train.config import TrainConfig, upgrade_train_dict
from moescale.train.trainer import LEGACY_RUN_CONFIG_NAME, RESULT_NAME, RUN_CONFIG_NAME

__all__ = ["HF_FAMILIES", "HFExport", "export_hf", "hf_family", "hf_config", "hf_state_dict"]

HF_FAMILIES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}
"""Families an export can target (``model_type`` → architecture class)."""

_RMS_EPS: float = inspect.signature(RMSNorm).parameters["eps"].default
_RUN_CONFIG_NAMES = (RUN_CONFIG_NAME, LEGACY_RUN_CONFIG_NAME)  # the run's own record, newest first


@dataclass(frozen=True)
class HFExport:
    """What :func:`export_hf` wrote."""

    out_dir: Path
    model_type: str
    architecture: str
    n_tensors: int


# ---------------------------------------------------------------------------- family choice
def _common_blockers(spec: ModelSpec, moe: MoEConfig | None) -> list[str]:
    """Features no target family represents."""
    found = []
    if spec.attention != "gqa":
        found.append(f"attention={spec.attention!r}")
    if spec.sliding_window is not None:
        found.append(f"sliding_window={spec.sliding_window}")
    if spec.rope_fraction != 1.0:
        found.append(f"rope_fraction={spec.rope_fraction} (partial RoPE)")
    for flag in ("attention_sinks", "expert_bias", "router_bias"):
        if getattr(spec, flag):
            found.append(f"{flag}=true")
    if spec.is_moe and moe is not None:
        if moe.router == "sigmoid_topk":
            found.append("router='sigmoid_topk'")
        if moe.routed_scaling != 1.0:
            found.append(f"routed_scaling={moe.routed_scaling}")
        if moe.capacity_factor is not None:
            found.append(f"capacity_factor={moe.capacity_factor} (transformers is dropless)")
    return found


def _same_attention_biases(spec: ModelSpec) -> str | None:
    if spec.qkv_bias != spec.o_bias:
        return f"qkv_bias={spec.qkv_bias} with o_bias={spec.o_bias} (needs both or neither)"
    return None


def _qk_norm(spec: ModelSpec, wanted: str) -> str | None:
    return None if spec.qk_norm == wanted else f"qk_norm={spec.qk_norm!r} (needs {wanted!r})"


def _no_shared(spec: ModelSpec) -> str | None:
    return f"n_shared_experts={spec.n_shared_experts}" if spec.n_shared_experts else None


_RULES: dict[str, Callable[[ModelSpec, MoEConfig], list[str | None]]] = {
    "llama": lambda s, m: [
        "n_experts > 0 (MoE)" if s.is_moe else None, _qk_norm(s, "none"),
        _same_attention_biases(s)],
    "qwen3": lambda s, m: [
        "n_experts > 0 (MoE)" if s.is_moe else None, _qk_norm(s, "head"),
        _same_attention_biases(s)],
    "mixtral": lambda s, m: [
        None if s.is_moe else "a dense spec", _qk_norm(s, "none"), _no_shared(s),
        "qkv_bias/o_bias" if (s.qkv_bias or s.o_bias) else None,
        f"{s.n_dense_layer_count} dense layer(s)" if s.is_moe and s.n_dense_layer_count else None,
        f"router={m.router!r} (needs 'softmax_topk_renorm')"
        if m.router != "softmax_topk_renorm" else None],
    "qwen3_moe": lambda s, m: [
        None if s.is_moe else "a dense spec", _qk_norm(s, "head"), _no_shared(s),
        _same_attention_biases(s)],
    "qwen2_moe": lambda s, m: [
        None if s.is_moe else "a dense spec", _qk_norm(s, "none"),
        f"o_bias={s.o_bias}" if s.o_bias else None,
        "ungated shared experts (shared_expert_gate=false)"
        if s.n_shared_experts and not s.shared_expert_gate else None],
}


def hf_family(spec: ModelSpec, moe: MoEConfig | None = None) -> str:
    """The ``model_type`` of the first family (order of :data:`HF_FAMILIES`) that represents
    ``spec`` with router recipe ``moe`` exactly; :class:`ConfigError` naming, per family,
    the feature it lacks otherwise.

    >>> hf_family(ModelSpec(d_model=64, n_layers=2, n_heads=4, vocab_size=100, d_ffn=128))
    'llama'
    """
    moe = moe or MoEConfig()
    common = _common_blockers(spec, moe)
    if common:
        raise ConfigError(
            f"cannot export spec {spec.name or '(unnamed)'} to transformers: no family "
            f"represents {', '.join(common)}"
        )
    reasons = {}
    for family, rule in _RULES.items():
        lacks = [r for r in rule(spec, moe) if r]
        if not lacks:
            return family
        reasons[family] = lacks[0]
    raise ConfigError(
        f"cannot export spec {spec.name or '(unnamed)'} to transformers exactly: "
        + "; ".join(f"{f}: {r}" for f, r in reasons.items())
    )


# ---------------------------------------------------------------------------- config.json
def hf_config(
    spec: ModelSpec, moe: MoEConfig | None = None, *, max_position_embeddings: int = 4096,
    init_std: float = 0.006, dtype: str = "float32",
) -> dict[str, Any]:
    """The transformers ``config.json`` of ``spec`` in its family (:func:`hf_family`)."""
    moe = moe or MoEConfig()
    family = hf_family(spec, moe)
    cfg: dict[str, Any] = {
        "architectures": [HF_FAMILIES[family]],
        "model_type": family,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.d_ffn or spec.d_expert,
        "hidden_act": "silu",
        "rms_norm_eps": _RMS_EPS,
        "tie_word_embeddings": spec.tie_embeddings,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": spec.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "initializer_range": init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    dense_layers = [i for i in range(spec.n_layers) if not spec.is_moe_layer(i)]
    if family in ("llama", "qwen3", "qwen3_moe"):
        cfg["attention_bias"] = spec.qkv_bias
    if family == "llama":
        cfg["mlp_bias"] = False
    if family in ("qwen3", "qwen3_moe", "qwen2_moe"):
        cfg.update(use_sliding_window=False, sliding_window=None)
    if family == "mixtral":
        cfg.update(num_local_experts=spec.n_experts, num_experts_per_tok=spec.top_k,
                   intermediate_size=spec.d_expert, sliding_window=None,
                   router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False)
    if family in ("qwen3_moe", "qwen2_moe"):
        cfg.update(
            num_experts=spec.n_experts, num_experts_per_tok=spec.top_k,
            moe_intermediate_size=spec.d_expert, decoder_sparse_step=1,
            mlp_only_layers=dense_layers, norm_topk_prob=moe.router == "softmax_topk_renorm",
            router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False,
        )
    if family == "qwen2_moe":
        cfg.update(qkv_bias=spec.qkv_bias,
                   shared_expert_intermediate_size=spec.n_shared_experts * spec.d_shared)
    return cfg


# ---------------------------------------------------------------------------- weights
def hf_state_dict(
    spec: ModelSpec, state_dict: dict[str, torch.Tensor], family: str
) -> dict[str, torch.Tensor]:
    """moescale's state dict (:class:`~moescale.model.Transformer` key names) renamed and
    split into ``family``'s. Every input tensor is used or checked: an unknown key, or a
    non-zero aux-loss-free selection bias (no family has one), is a :class:`ConfigError`."""
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise DataError(f"the weights lack {key!r} for spec {spec.name or '(unnamed)'}")
        return sd.pop(key).detach().cpu().contiguous()

    def swiglu(src: str, dst: str, names=("gate_proj", "up_proj", "down_proj")) -> None:
        gate, up = take(f"{src}.gate_up.weight").chunk(2, dim=0)
        out[f"{dst}.{names[0]}.weight"] = gate.contiguous()
        out[f"{dst}.{names[1]}.weight"] = up.contiguous()
        out[f"{dst}.{names[2]}.weight"] = take(f"{src}.down.weight")

    out["model.embed_tokens.weight"] = take("embed.weight")
    out["model.norm.weight"] = take("norm.weight")
    head = take("head.weight") if "head.weight" in sd else None
    if not spec.tie_embeddings:
        if head is None:
            raise DataError("the weights lack 'head.weight' for an untied spec")
        out["lm_head.weight"] = head
    for i in range(spec.n_layers):
        src, dst = f"blocks.{i}", f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = take(f"{src}.attn_norm.weight")
        out[f"{dst}.post_attention_layernorm.weight"] = take(f"{src}.ffn_norm.weight")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{dst}.self_attn.{proj}.weight"] = take(f"{src}.attn.{proj}.weight")
            if f"{src}.attn.{proj}.bias" in sd:
                out[f"{dst}.self_attn.{proj}.bias"] = take(f"{src}.attn.{proj}.bias")
        if spec.qk_norm == "head":
            for norm in ("q_norm", "k_norm"):
                out[f"{dst}.self_attn.{norm}.weight"] = take(f"{src}.attn.{norm}.weight")
        if not spec.is_moe_layer(i):
            swiglu(f"{src}.ffn", f"{dst}.mlp")
            continue
        bias = sd.pop(f"{src}.ffn.router.score_bias", None)
        if bias is not None and bool(bias.ne(0).any()):
            raise ConfigError(
                f"cannot export: layer {i} has a non-zero aux-loss-free selection bias "
                "(router score_bias); no transformers family with a softmax router has one")
        out[f"{dst}.mlp.gate.weight"] = take(f"{src}.ffn.router.linear.weight")
        out[f"{dst}.mlp.experts.gate_up_proj"] = take(f"{src}.ffn.experts.w_gate_up")
        out[f"{dst}.mlp.experts.down_proj"] = take(f"{src}.ffn.experts.w_down")
        if family == "qwen2_moe":
            shared = f"{dst}.mlp.shared_expert"
            if spec.n_shared_experts:
                swiglu(f"{src}.ffn.shared", shared)
                out[f"{shared}_gate.weight"] = take(f"{src}.ffn.shared_gate.weight")
            else:  # a zero-width shared expert: its (gated) output is exactly 0
                like = out[f"{dst}.mlp.gate.weight"]
                d = spec.d_model
                out[f"{shared}.gate_proj.weight"] = like.new_zeros(0, d)
                out[f"{shared}.up_proj.weight"] = like.new_zeros(0, d)
                out[f"{shared}.down_proj.weight"] = like.new_zeros(d, 0)
                out[f"{shared}_gate.weight"] = like.new_zeros(1, d)
    if sd:
        raise DataError(f"cannot export: unexpected weight(s) {', '.join(sorted(sd))}")
    return out


# ---------------------------------------------------------------------------- run folder
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data


def _run_record(run_dir: Path) -> tuple[ModelSpec, TrainConfig, dict[str, Any]]:
    if not run_dir.is_dir():
        raise ConfigError(f"'run_dir' must be a training run folder; {run_dir} does not exist")
    result_path = run_dir / RESULT_NAME
    if not result_path.is_file():
        raise ConfigError(f"cannot export {run_dir}: it has no {RESULT_NAME} (not a finished run)")
    result = _read_json(result_path)
    if result.get("status") != "completed":
        raise ConfigError(
            f"cannot export {run_dir}: the run is not finished "
            f"(status {result.get('status')!r} in {RESULT_NAME}); export needs 'completed'")
    for name in _RUN_CONFIG_NAMES:
        if (run_dir / name).is_file():
            record = _read_json(run_dir / name)
            if "spec" in record and "train" in record:
                spec = ModelSpec.from_dict(record["spec"])
                train = TrainConfig.from_dict(upgrade_train_dict(record["train"], warn=False))
                return spec, train, record
    raise DataError(f"cannot export {run_dir}: no run record ({' or '.join(_RUN_CONFIG_NAMES)})")


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> HFExport:
    """Write ``out_dir/config.json`` and ``out_dir/model.safetensors`` of the finished run
    ``run_dir`` (weights from ``model.safetensors`` or ``model.pt``) in the transformers
    family that represents it exactly (:func:`hf_family`).

    ``out_dir`` must be new or empty; an unfinished run, a spec no family represents, or
    weights that do not match the spec raise a :class:`~moescale.errors.MoescaleError`.
    """
    from safetensors.torch import save as st_save  # the [hf] extra

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"'--out' must be a new or empty folder; {out} is not empty")
    spec, train, record = _run_record(run_dir)
    moe = train.moe
    family = hf_family(spec, moe)  # refuse before reading the weights
    weights = next((run_dir / n for n in (SAFETENSORS_NAME, MODEL_NAME)
                    if (run_dir / n).is_file()), None)
    if weights is None:
        raise DataError(f"cannot export {run_dir}: no {SAFETENSORS_NAME} or {MODEL_NAME}")
    tensors = hf_state_dict(spec, load_weights(weights), family)
    dtype = str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    seq_len = (record.get("plan") or {}).get("seq_len") or 4096
    config = hf_config(spec, moe, max_position_embeddings=int(seq_len),
                       init_std=train.init_std, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.safetensors",
                 st_save(tensors, metadata={"format": "pt", "producer": "moescale"}))
    atomic_write(out / "config.json", json.dumps(config, indent=2) + "\n")
    return HFExport(out_dir=out, model_type=family, architecture=HF_FAMILIES[family],
                    n_tensors=len(tensors))
