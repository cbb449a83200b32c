"""Count a Hugging Face config with ``transformers`` itself: the model built on the
``meta`` device (no memory, no weights), parameters summed per group.

This is the ``[hf]`` extra's path: ``transformers`` and ``torch`` are imported lazily,
only here. It backs ``moescale count --via transformers`` (any family transformers can
build) and ``moescale count --verify`` (moescale's own reading cross-checked group by
group). Nothing is downloaded and no remote code runs: configs whose ``model_type``
transformers does not know are resolved through ``architectures[0]``.

Groups follow :class:`~moescale.spec.accounting.ParamCounts` and are assigned from
parameter names (``embed_tokens`` -> embedding, ``lm_head`` -> head, ``self_attn`` ->
attention, ``mamba``/``linear_attn``/``mixer`` -> mixer, ``*norm*`` -> norms,
``experts`` -> routed_experts, ``shared_expert*`` -> shared_experts, ``gate``/``router``
-> router, other MLP weights -> dense_ffn); names
that fit none land in ``other``. Selection-bias buffers (``e_score_correction_bias``)
are counted with the router, as the checkpoints store them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from typing import Any

from moescale.errors import ConfigError

__all__ = [
    "meta_param_groups", "transformers_summary", "verify_spec", "count_path", "GROUPS",
    "COMPARED_GROUPS", "transformers_available",
]

COMPARED_GROUPS = ("embedding", "head", "attention", "norms", "dense_ffn", "router",
                   "routed_experts", "shared_experts", "mixer")
"""Groups both moescale and the meta build report (MTP blocks are never built by
transformers, so ``mtp`` is not compared)."""
GROUPS = (*COMPARED_GROUPS, "other")

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("head", re.compile(r"^(lm_head|output)\.")),
    ("embedding",
     re.compile(r"(embed_tokens|\bwte|word_embeddings|tok_embeddings|\bembeddings)\.")),
    ("shared_experts", re.compile(r"shared_expert|shared_mlp")),
    ("routed_experts", re.compile(r"\.experts\.")),
    ("router", re.compile(r"\.(gate|router)\.|e_score_correction_bias")),
    # Nemotron-H names every sublayer "mixer": its MLPs and attention are not mixers.
    ("dense_ffn", re.compile(r"\.mixer\.(up|down|gate)_proj\.")),
    ("attention", re.compile(r"\.mixer\.[qkvo]_proj\.")),
    ("mixer", re.compile(r"\.(mamba|linear_attn|mixer)\.")),
    ("attention", re.compile(r"\.(self_attn|self_attention|attn|attention)\.")),
    ("norms", re.compile(r"norm|\.ln_")),
    ("dense_ffn", re.compile(r"\.(mlp|mlps|feed_forward|ffn)\.")),
)


def _group(name: str, ndim: int = 2) -> str:
    """The group of a parameter; a 3-D weight outside shared experts is a stacked set of
    routed experts (JetMoE's ``mlp.input_linear``)."""
    for group, pattern in _RULES:
        if pattern.search(name):
            if group in ("attention", "dense_ffn") and ndim == 3:
                return "routed_experts"
            return group
    return "other"


class _UnknownToTransformers(ConfigError):
    """transformers has no model class for the config's model_type."""


def transformers_available() -> bool:
    """Whether the ``[hf]`` extra (transformers and torch) is installed (nothing imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch"))


def _require_transformers() -> tuple[Any, Any]:
    """Import torch and transformers (an ImportError names the missing [hf] extra)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
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
            raise _UnknownToTransformers(
                f"the installed transformers {transformers.__version__} has no model for "
                f"model_type {model_type!r} (architectures: {archs!r})"
            )
        model_type = by_class[arch]
    body = {k: _decode(v) for k, v in cfg.items() if k not in ("model_type", "auto_map")}
    try:
        return CONFIG_MAPPING[model_type].from_dict(body)
    except Exception as exc:  # noqa: BLE001 - transformers/hub validators raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"transformers could not read the config (model_type {model_type!r}): {first}"
        ) from None


def _decode(value: Any) -> Any:
    """Undo transformers' JSON encoding of non-finite floats ({"__float__": "Infinity"})."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def meta_param_groups(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameters per group of the transformers model for ``cfg``, built on ``meta``.

    Returns a dict over :data:`GROUPS` plus ``total``; tied weights count once.
    """
    torch, transformers = _require_transformers()
    config = _config(cfg, transformers)
    from transformers import AutoModel, AutoModelForCausalLM

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = AutoModelForCausalLM.from_config(config)
            except ValueError:
                model = AutoModel.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any build failure is the config's fault here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"transformers could not build model_type {config.model_type!r} on the meta "
            f"device: {type(exc).__name__}: {first}"
        ) from None
    groups = dict.fromkeys(GROUPS, 0)
    # MiniMax names its lightning (linear) attention "self_attn"; its decay buffers
    # (slope_rate) mark those modules as mixers.
    linear = tuple(n[: -len("slope_rate")] for n, _ in model.named_buffers()
                   if n.endswith(".slope_rate"))
    for name, p in model.named_parameters():
        group = "mixer" if linear and name.startswith(linear) else _group(name, p.ndim)
        groups[group] += p.numel()
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


def verify_spec(spec: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Cross-check moescale's reading of ``cfg`` (``spec``) against transformers' meta
    build, group by group.

    Returns ``{"match": bool, "groups": {group: {"moescale": n, "transformers": m}},
    "differ": [groups that differ]}``. For multimodal wrappers (``llama4``, ``gemma3``)
    the language model of ``text_config`` is compared, which is what moescale reads.
    """
    from moescale.spec.accounting import count_params

    family = spec.extra.get("family")
    if isinstance(cfg.get("text_config"), dict) and family in ("llama4_text", "gemma3_text"):
        cfg = {**cfg["text_config"], "model_type": family}
    ours = count_params(spec).as_dict()
    theirs = meta_param_groups(cfg)
    rows = {g: {"moescale": ours.get(g, 0), "transformers": theirs[g]} for g in COMPARED_GROUPS}
    rows["other"] = {"moescale": 0, "transformers": theirs["other"]}
    rows["total"] = {"moescale": ours["total"], "transformers": theirs["total"]}
    differ = [g for g, r in rows.items() if r["moescale"] != r["transformers"]]
    return {"match": not differ, "groups": rows, "differ": differ}


def count_path(
    path: str | os.PathLike, *, via: str = "auto", seq_len: int = 4096,
    include_mtp: bool = False, verify: bool = False,
) -> tuple[dict[str, Any], str | None]:
    """The ``moescale count`` record of a spec file, HF ``config.json`` or model folder.

    ``via``: ``moescale`` (native reading only), ``transformers`` (meta build: exact
    totals, approximate active parameters and FLOPs), or ``auto`` (native; an HF
    ``model_type`` moescale does not read falls back to transformers when installed).
    ``verify`` adds a ``verify`` entry (:func:`verify_spec`) to a native record.
    Returns (record, note): ``note`` says when the fallback was used, else None.
    """
    from moescale.spec.accounting import summary
    from moescale.spec.hf_config import REFUSED_MODEL_TYPES, resolve_model_type
    from moescale.spec.io import load_spec, read_hf_json, resolve_spec_path

    if via not in ("auto", "moescale", "transformers"):
        raise ConfigError(f"'via' must be one of 'auto', 'moescale', 'transformers'; got {via!r}")
    resolved = resolve_spec_path(path)
    is_json = resolved.suffix == ".json"
    if (via == "transformers" or verify) and not is_json:
        raise ConfigError(
            f"{'--verify' if verify else '--via transformers'} needs an HF config.json "
            f"or model folder; got {resolved}"
        )
    name = resolved.parent.name if resolved.name == "config.json" else resolved.stem
    if via == "transformers":
        return transformers_summary(read_hf_json(resolved), name=name), None
    note = None
    if via == "auto" and is_json:
        cfg = read_hf_json(resolved)
        try:
            resolve_model_type(cfg)
        except ConfigError:
            if not transformers_available():
                raise
            mt = cfg.get("model_type")
            try:
                record = transformers_summary(cfg, name=name)
            except _UnknownToTransformers as exc:
                raise ConfigError(
                    f"HF model_type {mt!r} is known neither to moescale nor to the installed "
                    f"transformers ({exc})"
                ) from None
            why = REFUSED_MODEL_TYPES.get(mt, "a model_type moescale does not know")
            return record, (
                f"model_type {mt!r} is not read natively ({why}); counted through "
                "transformers: totals exact, active params and FLOPs approximate"
            )
    spec = load_spec(resolved)
    record = summary(spec, seq_len=seq_len, include_mtp=include_mtp)
    if verify:
        record["verify"] = verify_spec(spec, read_hf_json(resolved))
    return record, note
