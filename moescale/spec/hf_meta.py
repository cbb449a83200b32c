"""Count a Hugging Face config with ``transformers`` itself: the model built on the
``meta`` device (no memory, no weights), parameters summed per group.

This is the ``[hf]`` extra's path: ``transformers`` and ``torch`` are imported lazily,
only here. It backs ``moescale count --via transformers`` (any family transformers can
build) and ``moescale count --verify`` (moescale's own reading cross-checked group by
group). Nothing is downloaded and no remote code runs: configs whose ``model_type``
transformers does not know are resolved through ``architectures[0]``.

Groups follow :class:`~moescale.spec.accounting.ParamCounts` and are assigned from
parameter names (``embed_tokens`` -> embedding, ``lm_head`` -> head, ``self_attn`` ->
attention, ``*norm*`` -> norms, ``experts`` -> routed_experts, ``shared_expert*`` ->
shared_experts, ``gate``/``router`` -> router, other MLP weights -> dense_ffn); names
that fit none land in ``other``. Selection-bias buffers (``e_score_correction_bias``)
are counted with the router, as the checkpoints store them.
"""

from __future__ import annotations

import re
from typing import Any

from moescale.errors import ConfigError

__all__ = ["meta_param_groups", "transformers_summary", "GROUPS"]

GROUPS = ("embedding", "head", "attention", "norms", "dense_ffn", "router", "routed_experts",
          "shared_experts", "other")

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("head", re.compile(r"^(lm_head|output)\.")),
    ("embedding", re.compile(r"(embed_tokens|\bwte|word_embeddings|tok_embeddings)\.")),
    ("shared_experts", re.compile(r"shared_expert|shared_mlp")),
    ("routed_experts", re.compile(r"\.experts\.")),
    ("router", re.compile(r"\.(gate|router)\.|e_score_correction_bias")),
    ("attention", re.compile(r"\.(self_attn|attn|attention)\.")),
    ("norms", re.compile(r"norm|\.ln_")),
    ("dense_ffn", re.compile(r"\.(mlp|feed_forward|ffn)\.")),
)


def _group(name: str) -> str:
    for group, pattern in _RULES:
        if pattern.search(name):
            return group
    return "other"


def _require_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise ConfigError(
            "counting through transformers needs the [hf] extra: pip install 'moescale[hf]'"
        ) from None
    return torch, transformers


def _config(cfg: dict[str, Any], transformers: Any) -> Any:
    """A transformers config object for ``cfg``, resolving remote-code names through
    ``architectures[0]`` (never running remote code)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"HF config field 'model_type' must be a string; got {model_type!r}")
    if model_type not in CONFIG_MAPPING:
        archs = cfg.get("architectures")
        by_class = {v: k for k, v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()}
        arch = archs[0] if isinstance(archs, list) and archs else None
        if arch not in by_class or by_class[arch] not in CONFIG_MAPPING:
            raise ConfigError(
                f"HF model_type {model_type!r} is known neither to moescale nor to the "
                f"installed transformers {transformers.__version__} (architectures: {archs!r})"
            )
        model_type = by_class[arch]
    body = {k: v for k, v in cfg.items() if k not in ("model_type", "auto_map")}
    try:
        return CONFIG_MAPPING[model_type].from_dict(body)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"transformers could not read the config (model_type {model_type!r}): {exc}"
        ) from None


def meta_param_groups(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameters per group of the transformers model for ``cfg``, built on ``meta``.

    Returns a dict over :data:`GROUPS` plus ``total``; tied weights count once.
    """
    torch, transformers = _require_transformers()
    config = _config(cfg, transformers)
    from transformers import AutoModel, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            try:
                model = AutoModelForCausalLM.from_config(config)
            except ValueError:
                model = AutoModel.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any build failure is the config's fault here
        raise ConfigError(
            f"transformers could not build model_type {config.model_type!r} on the meta "
            f"device: {type(exc).__name__}: {exc}"
        ) from None
    groups = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        groups[_group(name)] += p.numel()
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            groups["router"] += b.numel()
    groups["total"] = sum(groups[g] for g in GROUPS)
    return groups


def _first_int(cfg: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def transformers_summary(cfg: dict[str, Any], *, name: str = "") -> dict[str, Any]:
    """The ``count --via transformers`` record: exact totals from the meta build;
    active parameters and FLOPs/token approximate (flagged in ``approximate``).

    Active = total − routed experts × (1 − top_k / E), with E and top_k read from the
    usual keys; FLOPs/token = 6 × active non-embedding parameters (no attention-score
    term, since the mixer structure is not understood here).
    """
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    groups = meta_param_groups(cfg)
    total = groups["total"]
    emb = groups["embedding"] + groups["head"]
    n_exp = _first_int(text, ("num_experts", "num_local_experts", "n_routed_experts",
                              "moe_num_experts"))
    top_k = _first_int(text, ("num_experts_per_tok", "moe_k", "moe_topk", "top_k",
                              "experts_per_token"))
    routed = groups["routed_experts"]
    inactive = routed - routed * top_k // n_exp if (routed and n_exp and top_k) else 0
    active = total - inactive
    return {
        "name": name,
        "via": "transformers",
        "model_type": cfg.get("model_type"),
        "total_params": total,
        "total_params_non_embedding": total - emb,
        "active_params": active,
        "active_params_non_embedding": active - emb,
        "flops_per_token_6n": 6 * (active - emb),
        "approximate": ["active_params", "active_params_non_embedding", "flops_per_token_6n"],
        "params_by_group": groups,
    }
