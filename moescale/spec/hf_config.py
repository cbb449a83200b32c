"""Import a Hugging Face ``config.json`` as a :class:`ModelSpec`.

Each family is one declarative table (``_FAMILIES``): ModelSpec field -> where its
value comes from (a config key with the family's config-class default, a constant,
or a shared helper for structure such as layer layouts and sliding windows). The
tables follow the families' modelling code in ``transformers`` 5.x (or the vendor's
``trust_remote_code`` files for BailingMoe), so that
:func:`~moescale.spec.accounting.count_params` equals ``sum(p.numel())`` of the
model built from the same config (``tests/test_hf_roundtrip.py`` checks this for
every family against the installed transformers). Absent optional keys take the
config class's default; an absent required key is a :class:`ConfigError` naming it.

A ``model_type`` that is a remote-code name (``kimi_k2``) is resolved through
``architectures[0]`` (``DeepseekV3ForCausalLM`` -> ``deepseek_v3``). Families whose
structure ModelSpec cannot express are refused with the reason (``REFUSED``);
``moescale count --via transformers`` still counts them exactly.

Family traps handled (see ``docs/conventions.md``, "Hugging Face families"):

- ``olmoe`` / ``olmo2`` / ``olmo3`` / ``minimax_m2``: RMSNorm over the *full* q and k
  projections; ``qwen3*``, ``dots1``, ``glm4_moe``, ``hunyuan_v1_moe``, ``gemma3``:
  per-head q/k RMSNorm; ``llama4``: parameter-free L2 q/k norm.
- ``qwen3_moe`` saved by transformers 5.x names the expert count ``num_local_experts``;
  ``qwen2_moe`` saves ``sliding_window: 0`` when the window is off.
- ``deepseek_v2`` / ``deepseek_v3`` / ``kimi_k2``: MLA, ``first_k_dense_replace`` /
  ``moe_layer_freq``, ``e_score_correction_bias``, MTP layers excluded by default.
- ``gpt_oss``: q/k/v/o biases, attention sinks, router and expert biases.
- ``gemma2`` / ``gemma3`` / ``glm4``: four norms per block; ``cohere``: one
  (parallel block) and LayerNorm; ``phimoe``: LayerNorm with bias and an lm_head bias.
- ``llama4``: MoE every ``interleave_moe_layer_step`` layers with one shared expert,
  dense layers of width ``intermediate_size_mlp``, NoPE layers (``no_rope_layers``)
  and chunked attention on the RoPE layers.
- ``ernie4_5_moe``: ``use_bias`` puts biases on q/k/v/o, the dense and shared MLPs and
  the lm_head; MoE layers ``moe_layer_start_index`` .. ``moe_layer_end_index``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from moescale.errors import ConfigError
from moescale.spec.model_spec import MAX_LAYERS, ModelSpec, _count_multiples

__all__ = ["from_hf_config", "SUPPORTED_MODEL_TYPES", "REFUSED_MODEL_TYPES", "resolve_model_type"]

_SLIDING, _FULL, _CHUNKED = "sliding_attention", "full_attention", "chunked_attention"


def _short(value: Any, limit: int = 80) -> str:
    """repr of ``value`` cut to ``limit`` characters, so an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


class _Reader:
    """Typed access to an HF config dict; every error names the key and the model_type."""

    def __init__(self, cfg: dict[str, Any], model_type: str) -> None:
        self.cfg = cfg
        self.model_type = model_type

    def _where(self, key: str) -> str:
        return f"HF config field {key!r} (model_type {self.model_type!r})"

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def int(self, key: str, default: Any = ..., *, low: int = 1, high: int | None = None) -> Any:
        """An int in [low, high]; ``default`` when absent or null (required if no default)."""
        value = self.cfg.get(key)
        if value is None:
            if default is ...:
                raise ConfigError(
                    f"HF config (model_type {self.model_type!r}) is missing required field {key!r}"
                )
            return default
        raw = value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{self._where(key)} must be an int >= {low}; got {raw!r}")
        if high is not None and value > high:
            raise ConfigError(f"{self._where(key)} must be an int in [{low}, {high}]; got {raw!r}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where(key)} must be true or false; got {value!r}")
        return value

    def float(self, key: str, default: float) -> float:
        value = self.cfg.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self._where(key)} must be a number; got {value!r}")
        return float(value)

    def str(self, key: str, default: str) -> str:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self._where(key)} must be a string; got {value!r}")
        return value

    def list(self, key: str, n_layers: int) -> list | None:
        """A per-layer list of exactly ``n_layers`` entries, or None when absent."""
        value = self.cfg.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != n_layers:
            raise ConfigError(
                f"{self._where(key)} must list one entry per layer ({n_layers}); "
                f"got {_short(value)} ({len(value) if isinstance(value, list) else 'not a list'})"
            )
        return value

    def int_list(self, key: str, n_layers: int) -> list[int]:
        value = self.cfg.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers for i in value
        ):
            raise ConfigError(
                f"{self._where(key)} must be a list of layer indices in [0, {n_layers - 1}]; "
                f"got {_short(value)}"
            )
        return value

    def unsupported(self, key: str, value: Any, why: str) -> None:
        if self.cfg.get(key) == value:
            raise ConfigError(f"{self._where(key)} = {value!r} is not supported: {why}")


# ---------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Key:
    """A table entry read from the first present of ``keys`` (else ``default``)."""

    keys: tuple[str, ...]
    kind: str = "int"
    default: Any = ...
    low: int = 1

    def read(self, r: _Reader) -> Any:
        key = next((k for k in self.keys if r.has(k)), self.keys[0])
        if self.kind == "int":
            return r.int(key, self.default, low=self.low)
        return getattr(r, self.kind)(key, self.default)


def _int(*keys: str, default: Any = ..., low: int = 1) -> _Key:
    return _Key(keys, "int", default, low)


def _bool(key: str, default: bool) -> _Key:
    return _Key((key,), "bool", default)


Part = Callable[[_Reader, dict[str, Any]], Any]
"""A helper computing one field (or, under a ``*name`` key, several) from the reader and
the fields read so far."""


def _read_table(r: _Reader, table: dict[str, Any]) -> dict[str, Any]:
    """Apply a family table in order: _Key -> read, callable -> computed, else constant."""
    out: dict[str, Any] = {}
    for name, src in table.items():
        if isinstance(src, _Key):
            out[name] = src.read(r)
        elif callable(src):
            value = src(r, out)
            if name.startswith("*"):
                out.update(value)
            else:
                out[name] = value
        else:
            out[name] = src
    return out


# ---------------------------------------------------------------------------- layouts
def _every_k(indices: set[int], n_layers: int) -> tuple[int, int] | None:
    """(start, k) with {i >= start : i % k == 0, i < n_layers} == indices, or None.

    Closed form: the sorted indices must be an arithmetic progression of step k that
    starts on a multiple of k and reaches the last layer (the next one is >= n_layers).
    """
    items = sorted(indices)
    start, last = items[0], items[-1]
    if len(items) == 1:  # {s}: k = 1 if s is the last layer, else k = s when 2s >= n
        if start == n_layers - 1:
            return start, 1
        return (start, start) if start and 2 * start >= n_layers else None
    k = items[1] - start
    if start % k or last + k < n_layers or len(items) != (last - start) // k + 1:
        return None
    if any(b - a != k for a, b in zip(items, items[1:], strict=False)):
        return None
    return start, k


def _moe_layout(moe: Iterable[int], n_layers: int) -> dict[str, Any]:
    """ModelSpec layout fields for a set of MoE layer indices (rule form when possible)."""
    moe = set(moe)
    rule = _every_k(moe, n_layers) if moe else None
    if rule is not None:
        return {"n_dense_layers": rule[0], "moe_every": rule[1]}
    return {"moe_layers": tuple(sorted(moe))}


def _sliding_layout(sliding: Iterable[int], n_layers: int, window: int | None) -> dict[str, Any]:
    """ModelSpec sliding-window fields for a set of sliding layer indices."""
    sliding = set(sliding)
    if not sliding or window is None:
        return {}
    if len(sliding) == n_layers:
        return {"sliding_window": window, "sliding_every": 0}
    rule = _every_k(sliding, n_layers)
    if rule is not None and rule[0] == 0 and rule[1] > 1:
        return {"sliding_window": window, "sliding_every": rule[1]}
    return {"sliding_window": window, "sliding_layers": tuple(sorted(sliding))}


def _layer_types(r: _Reader, n_layers: int, local: str = _SLIDING) -> set[int] | None:
    """Local-attention layers from an explicit ``layer_types`` list, if any."""
    types = r.list("layer_types", n_layers)
    if types is None:
        return None
    bad = sorted({str(t) for t in types if t not in (local, _FULL)})
    if bad:
        raise ConfigError(
            f"{r._where('layer_types')} entries must be {local!r} or {_FULL!r}; "
            f"got {', '.join(map(repr, bad))}"
        )
    return {i for i, t in enumerate(types) if t == local}


def _window(r: _Reader, default: int | None) -> int | None:
    """``sliding_window``; an explicit null, or 0 (qwen2_moe's "off"), means none."""
    value = r.cfg.get("sliding_window", ...)
    if value is None or (type(value) is int and value == 0):
        return None
    return r.int("sliding_window", default)


def _sliding(
    rule: Callable[[_Reader, int], bool], *, default: int | None, gated: bool = False,
) -> Part:
    """Sliding-window fields: ``layer_types`` if present, else the family ``rule(r, i)``.

    ``gated``: without ``layer_types``, the family only slides when
    ``use_sliding_window`` is true (Qwen).
    """

    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        n = out["n_layers"]
        window = _window(r, default)
        explicit = _layer_types(r, n)
        if explicit is not None:
            if explicit and window is None:
                raise ConfigError(
                    f"HF config (model_type {r.model_type!r}) has sliding layers in "
                    "'layer_types' but no 'sliding_window'"
                )
            return _sliding_layout(explicit, n, window)
        if window is None or (gated and not r.bool("use_sliding_window", False)):
            return {}
        return _sliding_layout({i for i in range(n) if rule(r, i)}, n, window)

    return part


def _no_sliding_types(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """No sliding window; ``layer_types`` describes mixers (read elsewhere), not windows."""
    r.unsupported("use_sliding_window", True, "this family's sliding-window layout is not known")
    if r.has("sliding_window"):
        raise ConfigError(f"{r._where('sliding_window')} is not supported with mixer layers")
    return {}


def _no_sliding(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    r.unsupported("use_sliding_window", True, "this family's sliding-window layout is not known")
    types = _layer_types(r, out["n_layers"])
    if types:
        raise ConfigError(
            f"{r._where('layer_types')} has sliding layers, which this family does not build"
        )
    return {}


# ---------------------------------------------------------------------------- shared parts
def _n_layers(r: _Reader, out: dict[str, Any]) -> int:
    return r.int("num_hidden_layers", high=MAX_LAYERS)


def _kv_heads(r: _Reader, out: dict[str, Any]) -> int:
    # Some remote-code configs (BailingMoeV2) default KV heads to 0 meaning "= heads".
    return r.int("num_key_value_heads", out["n_heads"], low=0) or out["n_heads"]


def _rope_key(key: str, default: float) -> Part:
    """A RoPE setting at top level or, in transformers >= 5, inside ``rope_parameters``."""

    def part(r: _Reader, out: dict[str, Any]) -> float:
        rope = r.cfg.get("rope_parameters")
        if not r.has(key) and isinstance(rope, dict) and rope.get(key) is not None:
            return _Reader(rope, r.model_type).float(key, default)
        return r.float(key, default)

    return part


def _head_dim(default: int | None) -> _Key:
    return _int("head_dim", default=default)


_BASE: dict[str, Any] = {
    "n_heads": _int("num_attention_heads"),
    "d_model": _int("hidden_size"),
    "n_layers": _n_layers,
    "n_kv_heads": _kv_heads,
    "head_dim": _head_dim(None),
    "vocab_size": _int("vocab_size"),
    "tie_embeddings": _bool("tie_word_embeddings", False),
    "rope_theta": _rope_key("rope_theta", 10000.0),
}


_TIED = _bool("tie_word_embeddings", True)
"""``tie_embeddings`` for families whose config class ties by default."""


def _base(**changes: Any) -> dict[str, Any]:
    """The shared base table with family defaults changed (keeps the order)."""
    return {**_BASE, **changes}


def _attn_bias(key: str = "attention_bias", default: bool = False, *, o: bool = True) -> dict:
    """Llama-style ``attention_bias``: biases on q, k, v (and o unless ``o=False``)."""
    return {"qkv_bias": _bool(key, default), "o_bias": _bool(key, default) if o else False}


def _refuse(key: str, value: Any, why: str) -> Part:
    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        r.unsupported(key, value, why)
        return {}

    return part


def _shared(width: int, d_expert: int) -> dict[str, Any]:
    """Shared experts of total width ``width``, in units of ``d_expert`` when it divides.

    [EL]'s E_s (and hence S and A_formal) counts shared experts of the routed width;
    a wider single shared MLP (Qwen2-MoE) is E_s = width / d_expert such experts.
    """
    if width == 0:
        return {"n_shared_experts": 0}
    if width % d_expert == 0:
        return {"n_shared_experts": width // d_expert, "d_shared": d_expert}
    return {"n_shared_experts": 1, "d_shared": width}


def _shared_width(key: str, *, default: Any = ...) -> Part:
    """Shared-expert fields from a total-width key."""

    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        return _shared(r.int(key, default, low=0), out["d_expert"])

    return part


def _shared_count(key: str, default: Any = 0) -> Part:
    """``n_shared_experts`` from a count key, each of the routed width."""

    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        return {"n_shared_experts": r.int(key, default, low=0)}

    return part


def _dense_ffn(key: str = "intermediate_size") -> Part:
    """``d_ffn``: required when the model has a dense-FFN layer, else optional."""

    def part(r: _Reader, out: dict[str, Any]) -> int:
        n = out["n_layers"]
        n_moe = _moe_count(out, n)
        return r.int(key) if n_moe < n else r.int(key, 0, low=0)

    return part


def _moe_count(out: dict[str, Any], n: int) -> int:
    if not out.get("n_experts"):
        return 0
    if out.get("moe_layers") is not None:
        return len(out["moe_layers"])
    return _count_multiples(out.get("moe_every", 1), out.get("n_dense_layers", 0), n)


def _routed(experts: tuple[str, ...], width: str, top_k: tuple[str, ...] = (
        "num_experts_per_tok", "experts_per_token")) -> Part:
    """``n_experts``, ``top_k``, ``d_expert`` from the family's keys (first present wins)."""

    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        n_experts = _int(*experts).read(r)
        k = _int(*top_k).read(r)
        if k > n_experts:
            raise ConfigError(
                f"{r._where(next((t for t in top_k if r.has(t)), top_k[0]))} must be an int "
                f"in [1, {n_experts}] ({experts[0]}); got {k}"
            )
        return {"n_experts": n_experts, "top_k": k, "d_expert": r.int(width)}

    return part


def _no_empty_moe(r: _Reader, moe: set[int], n: int, why: str) -> None:
    if not moe:
        raise ConfigError(
            f"HF config (model_type {r.model_type!r}): {why} leave no MoE layer of {n}")


def _rule_layout(first_key: str, freq_key: str, first_default: int) -> Part:
    """DeepSeek-style layout: MoE iff i >= first_k_dense_replace and i % freq == 0 (the
    ModelSpec rule itself, so no layer list is built)."""

    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        n = out["n_layers"]
        first = r.int(first_key, first_default, low=0)
        freq = r.int(freq_key, 1)
        start = -(-first // freq) * freq  # first MoE layer: next multiple of freq
        if start >= n:
            _no_empty_moe(r, set(), n, f"{first_key!r} ({first}) and {freq_key!r} ({freq})")
        return {"n_dense_layers": start, "moe_every": freq}

    return part


def _qwen_moe_layout(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Qwen-MoE: MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
    n = out["n_layers"]
    dense = set(r.int_list("mlp_only_layers", n))
    step = r.int("decoder_sparse_step", 1)
    if not dense:
        if step == 1:
            return {"n_dense_layers": 0, "moe_every": 1}
        moe = set(range(step - 1, n, step))
    else:
        moe = {i for i in range(step - 1, n, step)} - dense
    _no_empty_moe(r, moe, n, f"'mlp_only_layers' and 'decoder_sparse_step' ({step})")
    return _moe_layout(moe, n)


def _per_layer_flags(key: str, n: int, r: _Reader) -> list[bool] | None:
    values = r.list(key, n)
    if values is None:
        return None
    if not all(v in (0, 1, True, False) for v in values):
        raise ConfigError(
            f"{r._where(key)} entries must be 0/1 or true/false; got {_short(values)}")
    return [bool(v) for v in values]


# ---------------------------------------------------------------------------- families
def _mla(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    mla = {
        "attention": "mla",
        "q_lora_rank": r.int("q_lora_rank", None),
        "kv_lora_rank": r.int("kv_lora_rank"),
        "qk_nope_head_dim": r.int("qk_nope_head_dim", low=0),
        "qk_rope_head_dim": r.int("qk_rope_head_dim", low=0),
        "v_head_dim": r.int("v_head_dim"),
        # MLA has no GQA grouping; head_dim records the q/k head width.
        "n_kv_heads": out["n_heads"],
    }
    mla["head_dim"] = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    if mla["head_dim"] < 1:
        raise ConfigError(
            f"HF config (model_type {r.model_type!r}): 'qk_nope_head_dim' + "
            "'qk_rope_head_dim' must be >= 1; got 0"
        )
    return mla


def _deepseek_moe(v3: bool) -> Part:
    def part(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
        if not v3 and not r.has("n_routed_experts"):  # DeepSeek-V2 code's dense variant
            return {"d_ffn": r.int("intermediate_size")}
        fields = _routed(("n_routed_experts",), "moe_intermediate_size")(r, out)
        # Layout of DeepSeek's own modelling code (V3's class defaults first_k_dense to 3).
        fields.update(_rule_layout("first_k_dense_replace", "moe_layer_freq", 3 if v3 else 0)(
            r, {**out, **fields}))
        fields["n_shared_experts"] = r.int("n_shared_experts", 0, low=0)
        # V3's aux-loss-free balancing keeps a per-expert selection bias with the router.
        method = r.str("topk_method", "noaux_tc" if v3 else "greedy")
        fields["router_score_bias"] = method == "noaux_tc"
        fields["d_ffn"] = _dense_ffn()(r, {**out, **fields})
        return fields

    return part


def _deepseek(v3: bool) -> dict[str, Any]:
    return {
        **_BASE, "*mla": _mla, **_attn_bias(),
        "*no_mlp_bias": _refuse("mlp_bias", True, "DeepSeek's MLPs have no biases"),
        "n_mtp_layers": _int("num_nextn_predict_layers", default=0, low=0),
        "*moe": _deepseek_moe(v3), "*window": _no_sliding,
    }


def _qwen_window(r: _Reader, i: int) -> bool:
    # Qwen2/Qwen3 dense: with use_sliding_window, layers i >= max_window_layers slide.
    return i >= r.int("max_window_layers", 28, low=0)


def _qwen2_moe_window(r: _Reader, i: int) -> bool:
    # Qwen2-MoE's config class rule: even layers below max_window_layers.
    return i % 2 == 0 and i < r.int("max_window_layers", 28, low=0)


def _every_layer(r: _Reader, i: int) -> bool:
    return True


def _pattern(key: str, default: int) -> Callable[[_Reader, int], bool]:
    """Gemma 3 / OLMo 3 / Cohere 2 rule: layer i is sliding unless (i + 1) % pattern == 0."""

    def rule(r: _Reader, i: int) -> bool:
        return bool((i + 1) % r.int(key, default))

    return rule


def _even(r: _Reader, i: int) -> bool:
    return i % 2 == 0


def _partial_rope(default: float = 1.0) -> Part:
    return _rope_key("partial_rotary_factor", default)


def _llama4_text(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Llama 4: MoE every ``interleave_moe_layer_step`` layers (or explicit ``moe_layers``),
    one shared expert of the routed width, NoPE and chunked-attention layers."""
    n = out["n_layers"]
    fields = _routed(("num_local_experts",), "intermediate_size")(r, out)
    step = r.int("interleave_moe_layer_step", 1)
    moe = set(r.int_list("moe_layers", n)) if r.has("moe_layers") else set(
        range(step - 1, n, step))
    _no_empty_moe(r, moe, n, f"'moe_layers' / 'interleave_moe_layer_step' ({step})")
    fields.update(_moe_layout(moe, n), n_shared_experts=1, d_shared=fields["d_expert"])
    fields["d_ffn"] = r.int("intermediate_size_mlp") if len(moe) < n else r.int(
        "intermediate_size_mlp", 0, low=0)
    fields.update(_nope_layers(r, n))
    nope = fields["nope_layers"] or ()
    chunk = r.int("attention_chunk_size", None)
    chunked = _layer_types(r, n, local=_CHUNKED)
    if chunked is None:
        chunked = set(range(n)) - set(nope)
    if chunk is not None and chunked:
        fields.update(_sliding_layout(chunked, n, chunk), local_attention="chunked")
    fields["qk_norm"] = "l2" if r.bool("use_qk_norm", True) else "none"
    return fields


def _nope_layers(r: _Reader, n: int) -> dict[str, Any]:
    """NoPE layers from ``no_rope_layers`` (1 = the layer uses RoPE, transformers' naming),
    else every ``no_rope_layer_interval``-th layer (SmolLM3, Llama 4)."""
    rope = _per_layer_flags("no_rope_layers", n, r)
    if rope is None:
        interval = r.int("no_rope_layer_interval", 4)
        rope = [(i + 1) % interval != 0 for i in range(n)]
    nope = tuple(i for i, use in enumerate(rope) if not use)
    return {"nope_layers": nope or None}


def _ernie_layout(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """ERNIE 4.5: MoE iff (i + 1) % interval == 0 and start <= i <= end."""
    n = out["n_layers"]
    start = r.int("moe_layer_start_index", 1, low=0)
    end = r.int("moe_layer_end_index", n - 1, low=0)
    step = r.int("moe_layer_interval", 1)
    moe = {i for i in range(max(start, step - 1), min(end, n - 1) + 1) if (i + 1) % step == 0}
    _no_empty_moe(r, moe, n, "'moe_layer_start_index' / 'moe_layer_end_index' / "
                  f"'moe_layer_interval' ({start}, {end}, {step})")
    return _moe_layout(moe, n)


def _bailing_first(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    n = out["n_layers"]
    first = r.int("first_k_dense_replace", 0, low=0)
    if first >= n:
        raise ConfigError(
            f"{r._where('first_k_dense_replace')} must be an int in [0, {n - 1}]; got {first}"
        )
    return {"n_dense_layers": first}


def _bailing_shared(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """BailingMoe shared experts: one MLP of width moe_intermediate_size x num_shared."""
    n_shared = r.int("num_shared_experts", 0, low=0)
    width = r.int("moe_shared_expert_intermediate_size", n_shared * out["d_expert"], low=0)
    return _shared(width, out["d_expert"])


def _bailing(v2: bool) -> dict[str, Any]:
    table = {
        **_BASE,
        "*routed": _routed(("num_experts",), "moe_intermediate_size"),
        "*layout": _bailing_first, "*shared": _bailing_shared,
        # Fused query_key_value carries use_qkv_bias; the output 'dense' carries use_bias,
        # whose config-class default is true.
        "qkv_bias": _bool("use_qkv_bias", False), "o_bias": _bool("use_bias", True),
        "d_ffn": _dense_ffn(), "*window": _no_sliding,
    }
    if v2:
        table.update({
            "qk_norm": lambda r, o: "head" if r.bool("use_qk_norm", False) else "none",
            "router_score_bias": _bool("moe_router_enable_expert_bias", True),
            "n_mtp_layers": _int("num_nextn_predict_layers", default=0, low=0),
            "rope_fraction": _partial_rope(0.5),
        })
    return table


def _linear_layers(r: _Reader, n: int, default: Callable[[int], bool]) -> tuple[int, ...]:
    """Linear-attention layers: ``layer_types`` entries ``linear_attention``, else
    MiniMax's remote-code ``attn_type_list`` (0 = linear), else the family rule."""
    types = r.list("layer_types", n)
    if types is not None:
        bad = sorted({str(t) for t in types if t not in ("linear_attention", _FULL)})
        if bad:
            raise ConfigError(
                f"{r._where('layer_types')} entries must be 'linear_attention' or "
                f"{_FULL!r}; got {', '.join(map(repr, bad))}"
            )
        return tuple(i for i, t in enumerate(types) if t == "linear_attention")
    flags = _per_layer_flags("attn_type_list", n, r)
    if flags is not None:
        return tuple(i for i, full in enumerate(flags) if not full)
    return tuple(i for i in range(n) if default(i))


def _qwen3_next_mixers(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Qwen3-Next: gated DeltaNet on ``linear_attention`` layers (default: all but every
    ``full_attention_interval``-th), gated full attention on the others."""
    interval = r.int("full_attention_interval", 4)
    linear = _linear_layers(r, out["n_layers"], lambda i: bool((i + 1) % interval))
    if not linear:
        return {}
    return {
        "mixer": "gated_deltanet", "mixer_layers": linear,
        "mixer_conv": r.int("linear_conv_kernel_dim", 4),
        "linear_key_heads": r.int("linear_num_key_heads", 16),
        "linear_value_heads": r.int("linear_num_value_heads", 32),
        "linear_key_dim": r.int("linear_key_head_dim", 128),
        "linear_value_dim": r.int("linear_value_head_dim", 128),
    }


def _minimax_mixers(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """MiniMax-Text-01: lightning attention on linear layers (class default: odd layers)."""
    linear = _linear_layers(r, out["n_layers"], lambda i: i % 2 == 1)
    return {"mixer": "lightning", "mixer_layers": linear} if linear else {}


def _jamba(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Jamba: attention iff i % attn_layer_period == attn_layer_offset (no positional
    encoding), Mamba elsewhere; MoE iff i % expert_layer_period == expert_layer_offset."""
    n, d = out["n_layers"], out["d_model"]
    fields = _routed(("num_experts",), "intermediate_size")(r, out)
    e_period, e_offset = r.int("expert_layer_period", 2), r.int("expert_layer_offset", 1, low=0)
    moe = set(range(e_offset, n, e_period))
    _no_empty_moe(r, moe, n, f"'expert_layer_period' ({e_period}) / 'expert_layer_offset' "
                             f"({e_offset})")
    fields.update(_moe_layout(moe, n))
    fields["d_ffn"] = r.int("intermediate_size")
    a_period, a_offset = r.int("attn_layer_period", 8), r.int("attn_layer_offset", 4, low=0)
    attention = set(range(a_offset, n, a_period))
    mamba = tuple(i for i in range(n) if i not in attention)
    rank = r.cfg.get("mamba_dt_rank", "auto")
    rank = -(-d // 16) if rank in ("auto", None) else r.int("mamba_dt_rank")
    fields["nope_layers"] = tuple(sorted(attention)) or None
    if mamba:
        fields.update(
            mixer="mamba", mixer_layers=mamba, mixer_conv=r.int("mamba_d_conv", 4),
            mamba_d_inner=r.int("mamba_expand", 2) * d, mamba_d_state=r.int("mamba_d_state", 16),
            mamba_dt_rank=rank, mamba_proj_bias=r.bool("mamba_proj_bias", False),
            mamba_conv_bias=r.bool("mamba_conv_bias", True), mamba_inner_norms=True,
        )
    return fields


_NEMOTRON_BLOCKS = {"M": "M", "linear_attention": "M", "mamba": "M", "*": "*",
                    "full_attention": "*", "attention": "*", "-": "-", "mlp": "-",
                    "E": "E", "moe": "E"}


def _nemotron_h(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Nemotron-H: every block is ONE sublayer behind one RMSNorm: Mamba-2 (M), attention
    (*), squared-ReLU MLP (-) or MoE of squared-ReLU experts with a shared expert (E),
    from ``layers_block_type`` (or the older ``hybrid_override_pattern``)."""
    types = r.cfg.get("layers_block_type", r.cfg.get("layer_types"))
    key = "layers_block_type"
    if types is None:
        # the config class's default layout
        types, key = r.cfg.get("hybrid_override_pattern", "ME*-"), "hybrid_override_pattern"
    if isinstance(types, str):
        types = list(types)
    if not isinstance(types, list) or not types or not all(
            isinstance(t, str) and t in _NEMOTRON_BLOCKS for t in types):
        raise ConfigError(
            f"{r._where(key)} must list block types (mamba/linear_attention, "
            f"attention/full_attention, mlp, moe, or M * - E); got {_short(types)}"
        )
    if len(types) > MAX_LAYERS:
        raise ConfigError(f"{r._where(key)} must list at most {MAX_LAYERS} layers; "
                          f"got {len(types)}")
    if r.int("num_nextn_predict_layers", 0, low=0):
        raise ConfigError(
            f"{r._where('num_nextn_predict_layers')} > 0 is not supported: Nemotron-H's MTP "
            "blocks (mtp_layers_block_type) are not part of ModelSpec; use --via transformers"
        )
    if r.cfg.get("moe_latent_size") is not None:
        raise ConfigError(f"{r._where('moe_latent_size')} is not supported: the latent MoE "
                          "projection is not part of ModelSpec")
    kinds = [_NEMOTRON_BLOCKS[t] for t in types]
    n = len(kinds)
    at = {k: tuple(i for i, t in enumerate(kinds) if t == k) for k in "M*-E"}
    fields: dict[str, Any] = {
        "n_layers": n, "norms_per_layer": 1, "gated_ffn": False,
        "ffn_bias": r.bool("mlp_bias", False),
        "mixerless_layers": tuple(sorted(at["-"] + at["E"])) or None,
        "ffn_layers": tuple(sorted(at["-"] + at["E"])),
        "d_ffn": r.int("intermediate_size") if at["-"] else r.int(
            "intermediate_size", 0, low=0),
    }
    if at["E"]:
        fields.update(_routed(("n_routed_experts", "num_local_experts"),
                              "moe_intermediate_size")(r, out))
        width = r.int("moe_shared_expert_intermediate_size", low=0)
        fields.update(moe_layers=at["E"], router_score_bias=True,
                      **_shared(width, fields["d_expert"]))
    if at["M"]:
        fields.update(
            mixer="mamba2", mixer_layers=at["M"], mixer_conv=r.int("conv_kernel", 4),
            mamba_heads=r.int("mamba_num_heads", 128), mamba_groups=r.int("n_groups", 8),
            mamba_d_state=r.int("ssm_state_size", 128),
            mamba_conv_bias=r.bool("use_conv_bias", True),
            mamba_proj_bias=r.bool("use_bias", False))
        fields["mamba_d_inner"] = fields["mamba_heads"] * r.int("mamba_head_dim", 64)
    return fields


_MAMBA_TYPES, _ATTN_TYPES = ("linear_attention", "mamba"), (_FULL, "attention")


def _mamba2_hybrid(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Bamba / Granite-4.0-H: Mamba-2 on ``mamba`` (``linear_attention``) blocks, attention
    on the others (``layers_block_type`` / ``layer_types``, or Bamba's
    ``attn_layer_indices``); d_inner = mamba_expand · d."""
    n, d = out["n_layers"], out["d_model"]
    key = next((k for k in ("layers_block_type", "layer_types") if r.has(k)), None)
    if key is not None:
        types = r.list(key, n)
        bad = sorted({str(t) for t in types if t not in _MAMBA_TYPES + _ATTN_TYPES})
        if bad:
            raise ConfigError(f"{r._where(key)} entries must be one of "
                              f"{', '.join(map(repr, _MAMBA_TYPES + _ATTN_TYPES))}; got {bad}")
        attention = {i for i, t in enumerate(types) if t in _ATTN_TYPES}
    else:
        attention = set(r.int_list("attn_layer_indices", n))
    mamba = tuple(i for i in range(n) if i not in attention)
    fields: dict[str, Any] = {}
    if r.model_type == "granitemoehybrid" and r.str("position_embedding_type", "") != "rope":
        fields["nope_layers"] = tuple(sorted(attention)) or None
    if not mamba:
        return fields
    expand = r.float("mamba_expand", 2)
    heads = r.int("mamba_n_heads", 128)
    if (expand * d) % heads or r.int("mamba_d_head", int(expand * d) // heads) * heads != int(
            expand * d):
        raise ConfigError(f"{r._where('mamba_d_head')} x mamba_n_heads must equal "
                          f"mamba_expand x hidden_size ({int(expand * d)})")
    return {
        **fields, "mixer": "mamba2", "mixer_layers": mamba,
        "mixer_conv": r.int("mamba_d_conv", 4), "mamba_heads": heads,
        "mamba_groups": r.int("mamba_n_groups", 1), "mamba_d_state": r.int("mamba_d_state", 256),
        "mamba_d_inner": int(expand * d), "mamba_conv_bias": r.bool("mamba_conv_bias", True),
        "mamba_proj_bias": r.bool("mamba_proj_bias", False),
    }


def _granite_hybrid_ffn(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Granite-4.0-H: routed experts plus a gated shared MLP, or (0 experts) the shared MLP
    alone as every block's dense FFN."""
    if r.int("num_local_experts", 8, low=0) == 0:
        return {"d_ffn": r.int("shared_intermediate_size", 1024)}
    fields = _routed(("num_local_experts",), "intermediate_size")(r, out)
    return {**fields, **_shared(r.int("shared_intermediate_size", 1024, low=0),
                                fields["d_expert"])}


def _falcon_h1(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """Falcon-H1: every block runs attention and a Mamba-2 mixer in parallel; the SSM
    width is ``mamba_d_ssm`` (else mamba_expand · d); the gated norm only with
    ``mamba_rms_norm``."""
    n, d = out["n_layers"], out["d_model"]
    in_bias, out_bias = r.bool("mamba_proj_bias", False), r.bool("projectors_bias", False)
    if in_bias != out_bias:
        raise ConfigError(
            f"{r._where('projectors_bias')} must equal 'mamba_proj_bias' ({in_bias}): "
            f"separate in/out projection biases are not part of ModelSpec; got {out_bias}"
        )
    d_inner = r.int("mamba_d_ssm", None) or int(r.float("mamba_expand", 2) * d)
    return {
        "mixer": "mamba2", "mixer_layers": tuple(range(n)), "mixer_parallel": True,
        "mixer_conv": r.int("mamba_d_conv", 4), "mamba_heads": r.int("mamba_n_heads", 128),
        "mamba_groups": r.int("mamba_n_groups", 1), "mamba_d_state": r.int("mamba_d_state", 256),
        "mamba_d_inner": d_inner, "mamba_conv_bias": r.bool("mamba_conv_bias", True),
        "mamba_proj_bias": in_bias, "mamba_gated_norm": r.bool("mamba_rms_norm", False),
    }


def _dbrx(r: _Reader, out: dict[str, Any]) -> dict[str, Any]:
    """DBRX keeps attention and FFN settings in nested ``attn_config`` / ``ffn_config``."""
    attn = r.cfg.get("attn_config") or {}
    ffn = r.cfg.get("ffn_config") or {}
    for key, value in (("attn_config", attn), ("ffn_config", ffn)):
        if not isinstance(value, dict):
            raise ConfigError(f"{r._where(key)} must be a table (JSON object); got {value!r}")
    a, f = _Reader(attn, "dbrx.attn_config"), _Reader(ffn, "dbrx.ffn_config")
    n_heads = r.int("n_heads", 16)
    fields = {
        "d_model": r.int("d_model", 2048),
        "n_layers": r.int("n_layers", 24, high=MAX_LAYERS),
        "n_heads": n_heads,
        "n_kv_heads": a.int("kv_n_heads", 1),
        "vocab_size": r.int("vocab_size", 32000),
        "tie_embeddings": r.bool("tie_word_embeddings", False),
        "rope_theta": a.float("rope_theta", r.float("rope_theta", 10000.0)),
        "n_experts": f.int("moe_num_experts", 4),
        "top_k": f.int("moe_top_k", 1),
        "d_expert": f.int("ffn_hidden_size", 3584),
        "norm": "layer",
    }
    if fields["top_k"] > fields["n_experts"]:
        raise ConfigError(
            f"HF config field 'ffn_config.moe_top_k' (model_type 'dbrx') must be an int in "
            f"[1, {fields['n_experts']}]; got {fields['top_k']}"
        )
    return fields


# Tables: ModelSpec field -> source. ``*name`` entries merge several fields.
_FAMILIES: dict[str, dict[str, Any]] = {
    # ---- dense
    "llama": {**_BASE, **_attn_bias(), "d_ffn": _int("intermediate_size"),
              "ffn_bias": _bool("mlp_bias", False), "*window": _no_sliding},
    "mistral": {**_BASE, "d_ffn": _int("intermediate_size"),
                # Mistral's config class defaults the window to 4096 on every layer (v0.1).
                "*window": _sliding(_every_layer, default=4096)},
    "qwen2": {**_BASE, "qkv_bias": True, "d_ffn": _int("intermediate_size"),
              "*window": _sliding(_qwen_window, default=4096, gated=True)},
    "qwen3": {**_base(head_dim=_head_dim(128)), "qk_norm": "head", **_attn_bias(),
              "d_ffn": _int("intermediate_size"),
              "*window": _sliding(_qwen_window, default=4096, gated=True)},
    "gemma": {**_base(head_dim=_head_dim(256), tie_embeddings=_TIED),
              **_attn_bias(), "d_ffn": _int("intermediate_size"), "*window": _no_sliding},
    "gemma2": {**_base(head_dim=_head_dim(256), tie_embeddings=_TIED),
               **_attn_bias(), "d_ffn": _int("intermediate_size"), "norms_per_layer": 4,
               "*window": _sliding(_even, default=4096)},
    "gemma3_text": {
        **_base(head_dim=_head_dim(256), tie_embeddings=_TIED),
        **_attn_bias(), "qk_norm": "head", "d_ffn": _int("intermediate_size"),
        "norms_per_layer": 4, "*window": _sliding(_pattern("sliding_window_pattern", 6),
                                                  default=4096)},
    "phi3": {**_BASE, "d_ffn": _int("intermediate_size"), "rope_fraction": _partial_rope(),
             "*window": _sliding(_every_layer, default=None)},
    "olmo2": {**_BASE, **_attn_bias(), "qk_norm": "full", "d_ffn": _int("intermediate_size"),
              "*window": _no_sliding},
    "olmo3": {**_BASE, **_attn_bias(), "qk_norm": "full", "d_ffn": _int("intermediate_size"),
              "*window": _sliding(_pattern("sliding_window_pattern", 4), default=4096)},
    "granite": {**_BASE, **_attn_bias(), "d_ffn": _int("intermediate_size"),
                "ffn_bias": _bool("mlp_bias", False), "*window": _no_sliding},
    "cohere": {**_base(tie_embeddings=_TIED), **_attn_bias(),
               "qk_norm": lambda r, o: "full" if r.bool("use_qk_norm", False) else "none",
               "norm": "layer", "norms_per_layer": 1, "d_ffn": _int("intermediate_size"),
               "*window": _no_sliding},
    "cohere2": {**_base(head_dim=_head_dim(128), tie_embeddings=_TIED),
                **_attn_bias(), "norm": "layer", "norms_per_layer": 1,
                "d_ffn": _int("intermediate_size"),
                "*window": _sliding(_pattern("sliding_window_pattern", 4), default=4096)},
    "glm": {**_base(head_dim=_head_dim(128)), **_attn_bias(default=True, o=False),
            "d_ffn": _int("intermediate_size"), "rope_fraction": _partial_rope(0.5),
            "*window": _no_sliding},
    "glm4": {**_base(head_dim=_head_dim(128)), **_attn_bias(default=True, o=False),
             "d_ffn": _int("intermediate_size"), "norms_per_layer": 4,
             "rope_fraction": _partial_rope(0.5), "*window": _no_sliding},
    "ernie4_5": {**_base(head_dim=_head_dim(128), tie_embeddings=_TIED),
                 **_attn_bias("use_bias"), "ffn_bias": _bool("use_bias", False),
                 "d_ffn": _int("intermediate_size"), "*window": _no_sliding},
    "seed_oss": {**_base(head_dim=_head_dim(128)), "qkv_bias": _bool("attention_bias", True),
                 "o_bias": _bool("attention_out_bias", False),
                 "ffn_bias": _bool("mlp_bias", False), "d_ffn": _int("intermediate_size"),
                 "*window": _no_sliding},
    "internlm3": {**_base(head_dim=_head_dim(128)), **_attn_bias(),
                  "ffn_bias": _bool("mlp_bias", False), "d_ffn": _int("intermediate_size"),
                  "*window": _no_sliding},
    "ministral3": {**_base(head_dim=_head_dim(128)), "d_ffn": _int("intermediate_size"),
                   "*window": _sliding(_every_layer, default=None)},
    "smollm3": {**_base(tie_embeddings=_TIED), **_attn_bias(),
                "ffn_bias": _bool("mlp_bias", False), "d_ffn": _int("intermediate_size"),
                "*nope": lambda r, o: _nope_layers(r, o["n_layers"]),
                "*window": _sliding(_qwen_window, default=None, gated=True)},
    "hunyuan_v1_dense": {**_BASE, "qk_norm": "head", **_attn_bias(),
                         "d_ffn": _int("intermediate_size"), "*window": _no_sliding},
    "starcoder2": {**_base(tie_embeddings=_TIED),
                   **_attn_bias("use_bias", True), "norm": "layer", "norm_bias": True,
                   "gated_ffn": False, "ffn_bias": _bool("use_bias", True),
                   "d_ffn": _int("intermediate_size"),
                   "*window": _sliding(_every_layer, default=None)},
    "youtu": {**_deepseek(v3=False), "tie_embeddings": _TIED},
    "minicpm3": {**_deepseek(v3=False), "tie_embeddings": _TIED},
    # ---- MoE
    "flex_olmo": {**_BASE, "*routed": _routed(("num_experts",), "intermediate_size"),
                  "qk_norm": "full", **_attn_bias(), "*window": _no_sliding},
    "sarvam_moe": {
        **_base(head_dim=_head_dim(64)),
        "*routed": _routed(("n_routed_experts",), "moe_intermediate_size"),
        "*layout": _rule_layout("first_k_dense_replace", "moe_layer_freq", 1),
        "*shared": _shared_count("n_shared_experts", 1), "router_score_bias": True,
        **_attn_bias(o=False),
        "qk_norm": lambda r, o: "head" if r.bool("use_qk_norm", True) else "none",
        "d_ffn": _dense_ffn(), "*window": _no_sliding},
    "mixtral": {**_BASE, "*routed": _routed(("num_local_experts",), "intermediate_size"),
                "*window": _sliding(_every_layer, default=None)},
    "olmoe": {**_BASE, "*routed": _routed(("num_experts",), "intermediate_size"),
              # OLMoE normalises the full q (hidden) and k (kv_heads * head_dim) projections.
              "qk_norm": "full", **_attn_bias(), "*window": _no_sliding},
    "qwen2_moe": {
        **_BASE, "*routed": _routed(("num_experts", "num_local_experts"), "moe_intermediate_size"),
        "*layout": _qwen_moe_layout,
        "*shared": _shared_width("shared_expert_intermediate_size"),
        "shared_expert_gate": lambda r, o: o["n_shared_experts"] > 0,
        "qkv_bias": _bool("qkv_bias", True), "d_ffn": _dense_ffn(),
        "*window": _sliding(_qwen2_moe_window, default=4096, gated=True)},
    "qwen3_moe": {
        **_BASE, "*routed": _routed(("num_experts", "num_local_experts"), "moe_intermediate_size"),
        "*layout": _qwen_moe_layout, "qk_norm": "head", **_attn_bias(), "d_ffn": _dense_ffn(),
        "*window": _sliding(_every_layer, default=4096, gated=True)},
    "deepseek_v2": _deepseek(v3=False),
    "deepseek_v3": _deepseek(v3=True),
    "gpt_oss": {
        **_base(head_dim=_head_dim(64)),
        "*routed": _routed(("num_local_experts",), "intermediate_size"),
        **_attn_bias(default=True), "attention_sinks": True, "router_bias": True,
        "expert_bias": True,
        # gpt-oss alternates: even layers use the 128-token window (config class default).
        "*window": _sliding(_even, default=128)},
    "bailing_moe": _bailing(v2=False),
    "bailing_moe_v2": _bailing(v2=True),
    "glm4_moe": {
        **_base(head_dim=_head_dim(None)),
        "*routed": _routed(("n_routed_experts",), "moe_intermediate_size"),
        "*layout": _rule_layout("first_k_dense_replace", "moe_layer_freq", 1),
        "*shared": _shared_count("n_shared_experts", 1), "router_score_bias": True,
        **_attn_bias(o=False),
        "qk_norm": lambda r, o: "head" if r.bool("use_qk_norm", False) else "none",
        "n_mtp_layers": _int("num_nextn_predict_layers", default=1, low=0),
        "rope_fraction": _partial_rope(0.5), "d_ffn": _dense_ffn(), "*window": _no_sliding},
    "dots1": {
        **_BASE, "*routed": _routed(("n_routed_experts",), "moe_intermediate_size"),
        "*layout": _rule_layout("first_k_dense_replace", "moe_layer_freq", 0),
        "*shared": _shared_count("n_shared_experts", 0), "router_score_bias": True,
        **_attn_bias(), "qk_norm": "head", "d_ffn": _dense_ffn(),
        "*window": _sliding(_qwen_window, default=4096, gated=True)},
    "ernie4_5_moe": {
        **_base(tie_embeddings=_TIED),
        "*routed": _routed(("moe_num_experts",), "moe_intermediate_size", ("moe_k",)),
        "*layout": _ernie_layout, "*shared": _shared_count("moe_num_shared_experts", 2),
        "router_score_bias": True, **_attn_bias("use_bias"),
        "ffn_bias": _bool("use_bias", False), "head_bias": _bool("use_bias", False),
        "d_ffn": _dense_ffn(), "*window": _no_sliding},
    "minimax_m2": {
        **_base(head_dim=_head_dim(128)),
        "*routed": _routed(("num_local_experts",), "intermediate_size"),
        "router_score_bias": lambda r, o: r.bool("use_routing_bias", True), "qk_norm": "full",
        "rope_fraction": _partial_rope(), "*window": _no_sliding},
    "granitemoe": {
        **_BASE, "*routed": _routed(("num_local_experts",), "intermediate_size"),
        **_attn_bias(), "*window": _no_sliding},
    "granitemoeshared": {
        **_BASE, "*routed": _routed(("num_local_experts",), "intermediate_size"),
        "*shared": _shared_width("shared_intermediate_size", default=0), **_attn_bias(),
        "*window": _no_sliding},
    "hunyuan_v1_moe": {
        **_BASE,
        "*routed": _routed(("num_experts",), "intermediate_size", ("moe_topk",)),
        # transformers' HunYuan-MoE: one shared MLP of intermediate_size in every layer.
        "*shared": lambda r, o: _shared(o["d_expert"], o["d_expert"]),
        "qk_norm": "head", **_attn_bias(), "*window": _no_sliding},
    "llama4_text": {**_base(head_dim=_head_dim(128)), "*llama4": _llama4_text, **_attn_bias()},
    "phimoe": {
        **_BASE, "*routed": _routed(("num_local_experts",), "intermediate_size"),
        "norm": "layer", "norm_bias": True, "head_bias": _bool("lm_head_bias", False),
        **_attn_bias(), "*window": _sliding(_every_layer, default=None)},
    "dbrx": {"*dbrx": _dbrx},
    # ---- hybrids
    "qwen3_next": {
        **_base(head_dim=_head_dim(256)),
        "*routed": _routed(("num_experts", "num_local_experts"), "moe_intermediate_size"),
        "*layout": _qwen_moe_layout,
        "*shared": _shared_width("shared_expert_intermediate_size", default=512),
        "shared_expert_gate": lambda r, o: o["n_shared_experts"] > 0,
        "qk_norm": "head", "attention_gate": True, **_attn_bias(), "d_ffn": _dense_ffn(),
        "rope_fraction": _partial_rope(0.25), "*mixers": _qwen3_next_mixers},
    "jamba": {**_BASE, "*jamba": _jamba},
    "nemotron_h": {
        **{k: v for k, v in _base(head_dim=_head_dim(128)).items() if k != "n_layers"},
        # transformers' NemotronH never ties (its embedding is not named embed_tokens)
        "*tie": _refuse("tie_word_embeddings", True, "transformers' Nemotron-H keeps a "
                        "separate lm_head, so whether the checkpoint ties is ambiguous"),
        "tie_embeddings": False, "*nemotron": _nemotron_h},
    "bamba": {**_BASE, **_attn_bias(), "d_ffn": _int("intermediate_size"),
              "ffn_bias": _bool("mlp_bias", False), "rope_fraction": _partial_rope(0.5),
              "*mixers": _mamba2_hybrid},
    "granitemoehybrid": {**_BASE, **_attn_bias(), "*ffn": _granite_hybrid_ffn,
                         "*mixers": _mamba2_hybrid},
    "falcon_h1": {**_BASE, **_attn_bias(), "d_ffn": _int("intermediate_size"),
                  "ffn_bias": _bool("mlp_bias", False), "*mixers": _falcon_h1},
    "minimax": {**_BASE, "*routed": _routed(("num_local_experts",), "intermediate_size"),
                "*window": _no_sliding_types, "*mixers": _minimax_mixers},
}

# Multimodal wrappers whose language model is a supported family in ``text_config``.
_TEXT_CONFIG: dict[str, str] = {"llama4": "llama4_text", "gemma3": "gemma3_text"}
# Config-class defaults of keys whose absence would otherwise be read differently from
# transformers (hub files omit keys equal to the class default; an explicit null still
# means null). Nested text_configs of older hub files are sparse, hence the sizes of
# gemma3_text / llama4_text. Checked by tests/test_hf_roundtrip.py (absent keys).
_KV = "num_key_value_heads"
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"hidden_size": 2304, "num_hidden_layers": 26, "num_attention_heads": 8,
                    _KV: 4, "vocab_size": 262208, "intermediate_size": 9216},
    "llama4_text": {"hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40,
                    _KV: 8, "vocab_size": 202048, "intermediate_size": 8192,
                    "num_local_experts": 16, "num_experts_per_tok": 1,
                    "intermediate_size_mlp": 16384, "attention_chunk_size": 8192,
                    "rope_theta": 500000.0},
    "deepseek_v2": {"q_lora_rank": 1536},
    "deepseek_v3": {"q_lora_rank": 1536, "n_shared_experts": 1, "num_nextn_predict_layers": 1},
    "minicpm3": {"q_lora_rank": 768},
    "youtu": {"q_lora_rank": 1536},
    "falcon_h1": {_KV: 8, "mamba_d_ssm": 1024},
    "bamba": {_KV: 8}, "gemma2": {_KV: 4}, "glm": {_KV: 2}, "glm4": {_KV: 2},
    "internlm3": {_KV: 2}, "jamba": {_KV: 8}, "mistral": {_KV: 8}, "nemotron_h": {_KV: 8},
    "qwen2_moe": {"intermediate_size": 5632},
    "qwen3_moe": {_KV: 4, "intermediate_size": 6144},
    "qwen3_next": {_KV: 2, "intermediate_size": 5632}, "seed_oss": {_KV: 8},
    "starcoder2": {_KV: 2},
    "ernie4_5": {_KV: 2, "rope_theta": 500000.0},
    "ernie4_5_moe": {_KV: 4, "rope_theta": 500000.0},
    "gpt_oss": {_KV: 8, "rope_theta": 150000.0},
    "minimax": {_KV: 8, "rope_theta": 1e6}, "minimax_m2": {_KV: 8, "rope_theta": 5e6},
    "ministral3": {_KV: 8, "rope_theta": 1e6}, "mixtral": {_KV: 8, "rope_theta": 1e6},
    "phimoe": {_KV: 8, "rope_theta": 1e6}, "sarvam_moe": {_KV: 4, "rope_theta": 8e6},
    "smollm3": {_KV: 4, "rope_theta": 2e6},
    "cohere": {"rope_theta": 500000.0}, "flex_olmo": {"rope_theta": 500000.0},
}


def _with_class_defaults(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    """``cfg`` with the family's class defaults filled in where a key is absent (a RoPE
    base given inside ``rope_parameters`` counts as present)."""
    defaults = dict(_CLASS_DEFAULTS.get(family, {}))
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_theta") is not None:
        defaults.pop("rope_theta", None)
    return {**defaults, **cfg}


# transformers architecture class -> model_type, for remote-code aliases (kimi_k2).
_ARCHITECTURES: dict[str, str] = {
    "DeepseekV3ForCausalLM": "deepseek_v3", "DeepseekV2ForCausalLM": "deepseek_v2",
    "Qwen3MoeForCausalLM": "qwen3_moe", "Qwen2MoeForCausalLM": "qwen2_moe",
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
    "Glm4MoeForCausalLM": "glm4_moe", "BailingMoeForCausalLM": "bailing_moe",
    "BailingMoeV2ForCausalLM": "bailing_moe_v2",
}

REFUSED_MODEL_TYPES: dict[str, str] = {
    "jetmoe": "attention experts (mixture of attention heads) are not part of ModelSpec",
    "longcat_flash": "zero-computation experts and two attention blocks per layer are not "
                     "part of ModelSpec",
}
"""Families moescale knows it cannot express exactly, with the reason.
``moescale count --via transformers`` counts them exactly (active params approximate)."""

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted([*_FAMILIES, *_TEXT_CONFIG, "kimi_k2"]))
"""The HF ``model_type`` values :func:`from_hf_config` reads."""


def resolve_model_type(cfg: dict[str, Any]) -> str:
    """The family table a config uses: its ``model_type``, or, for a remote-code name,
    the family of ``architectures[0]`` (``kimi_k2`` -> ``deepseek_v3``).

    Raises :class:`ConfigError` naming the type for a refused or unknown family.
    """
    model_type = cfg.get("model_type")
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type is None:
        raise ConfigError(f"HF config has no 'model_type' field; supported: {supported}")
    if not isinstance(model_type, str):
        raise ConfigError(f"HF config field 'model_type' must be a string; got {model_type!r}")
    if model_type in _FAMILIES or model_type in _TEXT_CONFIG:
        return model_type
    if model_type in REFUSED_MODEL_TYPES:
        raise ConfigError(
            f"HF model_type {model_type!r} is not supported: {REFUSED_MODEL_TYPES[model_type]}; "
            "`moescale count --via transformers` counts it exactly"
        )
    archs = cfg.get("architectures")
    if isinstance(archs, list) and archs and archs[0] in _ARCHITECTURES:
        return _ARCHITECTURES[archs[0]]
    raise ConfigError(f"unsupported HF model_type {model_type!r}; supported: {supported}")


def from_hf_config(cfg: dict[str, Any], *, name: str = "", source: str = "") -> ModelSpec:
    """Build a :class:`ModelSpec` from a Hugging Face ``config.json`` dict.

    Parameters
    ----------
    cfg : dict
        The parsed ``config.json``.
    name : str
        Label for the spec (e.g. the file stem).
    source : str
        Where the dict came from (recorded in ``spec.extra["source"]``).

    Returns
    -------
    ModelSpec
        With ``extra`` holding the provenance: ``model_type`` (as written),
        ``family`` (the table used), ``source``, ``architectures``. MTP layers are
        recorded in ``n_mtp_layers`` and excluded from counts unless asked.

    Raises
    ------
    ConfigError
        Unknown or refused ``model_type`` (naming it, and the reason or the supported
        list), a missing required field (naming it and the model_type), or an
        invalid value.

    Examples
    --------
    >>> spec = from_hf_config({"model_type": "mixtral", "hidden_size": 4096,
    ...     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    ...     "vocab_size": 32000, "intermediate_size": 14336, "num_local_experts": 8,
    ...     "num_experts_per_tok": 2})
    >>> spec.activation_ratio, spec.granularity
    (0.25, 0.5714285714285714)
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"an HF config must be a JSON object; got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    family = resolve_model_type(cfg)
    extra: dict[str, Any] = {"model_type": model_type, "source": source or "hf config dict"}
    if isinstance(cfg.get("architectures"), list):
        extra["architectures"] = [str(a) for a in cfg["architectures"]]
    text = cfg
    if family in _TEXT_CONFIG:
        text = cfg.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(
                f"HF config field 'text_config' (model_type {model_type!r}) must be a table "
                f"(JSON object); got {text!r}"
            )
        family = _TEXT_CONFIG[family]
        extra["note"] = "language model only (text_config); vision encoder not counted"
    extra["family"] = family
    if family == "qwen2_moe":
        extra["shared_expert_intermediate_size"] = text.get("shared_expert_intermediate_size")
    text = _with_class_defaults(text, family)
    fields = _read_table(_Reader(text, str(model_type)), _FAMILIES[family])
    try:
        return ModelSpec(name=name or str(cfg.get("_name_or_path", "")), extra=extra, **fields)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in HF config, model_type {model_type!r})") from None
