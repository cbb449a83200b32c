"""`ModelSpec`: one validated description of a dense or MoE decoder-only transformer.

Glossary (conventions of ``../shared/spec/LAWS.md`` §1; every name below is used
with this meaning everywhere in moescale):

- ``n_experts`` E: routed experts per MoE layer (0 for a dense model).
- ``top_k`` E_a: routed experts activated per token.
- ``n_shared_experts`` E_s: always-on shared experts, each of width ``d_shared``.
- ``activation_ratio`` A = E_a / E (routed only). This is the input of the [EL]
  law (arXiv 2507.17702, Eq. 13). 1.0 for dense.
- ``activation_ratio_formal`` A_formal = (E_a + E_s) / (E + E_s) ([EL] §2).
- ``parameter ratio`` r_a = N_active / N_total ([EQ], arXiv 2506.12119).
- ``granularity`` G = 2·d_model / d_expert ([EL], DeepSeek-V3 style).
- ``granularity_fg`` G_fg = d_ffn / d_expert with FG's d_ffn = 4·d_model, i.e.
  G_fg = 2·G ([FG], arXiv 2402.07871).
- ``shared_ratio`` S = E_s / (E_a + E_s) ([EL] §4.3).

Layer layout: layer ``i`` (0-based) is an MoE layer iff the model has experts,
``i >= n_dense_layers`` and ``i % moe_every == 0`` (DeepSeek's
``first_k_dense_replace`` / ``moe_layer_freq`` convention), or, when the explicit
``moe_layers`` tuple is given, iff ``i in moe_layers`` (layouts the rule cannot
express, e.g. Qwen2-MoE's ``mlp_only_layers`` or ``decoder_sparse_step`` > 1).
Every other layer has a dense SwiGLU FFN of width ``d_ffn``. Sliding-window
layers follow the same pattern: ``sliding_every`` or the explicit ``sliding_layers``;
``local_attention = "chunked"`` makes those layers attend within fixed chunks of
``sliding_window`` tokens instead (Llama 4). ``nope_layers`` lists layers without RoPE.

Every layer count is computed in closed form (no loop over layers), and ``n_layers``
is bounded by :data:`MAX_LAYERS` so that no input can make accounting hang.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from moescale.errors import ConfigError, check_keys, check_range

__all__ = ["ModelSpec", "SPEC_SCHEMA_VERSION", "MAX_LAYERS", "MAX_SIZE"]

SPEC_SCHEMA_VERSION = 1
MAX_LAYERS = 1_000_000
"""Upper bound on ``n_layers``: beyond physical sense, and it keeps layer lists bounded."""
MAX_SIZE = 1_000_000_000
"""Upper bound on every other size (widths, heads, experts, vocabulary): beyond physical
sense, and it keeps every count and FLOP figure finite in float64."""

AttentionKind = Literal["gqa", "mla"]
QKNorm = Literal["none", "head", "full", "l2"]
NormKind = Literal["rms", "layer"]
LocalAttention = Literal["sliding", "chunked"]
MixerKind = Literal["none", "gated_deltanet", "mamba", "mamba2", "lightning"]


def _count_multiples(k: int, start: int, stop: int) -> int:
    """How many i in [start, stop) have i % k == 0 (closed form)."""
    if stop <= start:
        return 0
    return (stop - 1) // k - (start - 1) // k


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A dense or MoE decoder-only transformer, exactly enough to count and build it.

    Examples
    --------
    >>> dense = ModelSpec(d_model=256, n_layers=4, n_heads=4, vocab_size=256, d_ffn=688)
    >>> moe = ModelSpec(d_model=256, n_layers=4, n_heads=4, vocab_size=256, d_ffn=688,
    ...                 n_experts=64, top_k=8, n_shared_experts=1, d_expert=64)
    >>> moe.activation_ratio, moe.granularity
    (0.125, 8.0)
    """

    name: str = ""
    """Free-form label (e.g. the HF repo name); not used in any count."""
    d_model: int
    """Hidden size d."""
    n_layers: int
    """Number of transformer blocks L (MTP blocks excluded, see ``n_mtp_layers``)."""
    n_heads: int
    """Query heads n_h."""
    n_kv_heads: int | None = None
    """Key/value heads n_kv (GQA); ``None`` means n_kv = n_h (MHA)."""
    head_dim: int | None = None
    """Per-head width; ``None`` means d_model / n_heads (must then divide)."""
    vocab_size: int
    """Vocabulary size V."""
    tie_embeddings: bool = False
    """Whether the output head shares the input embedding matrix."""
    d_ffn: int = 0
    """Intermediate width of the dense SwiGLU FFN (dense model or dense layers)."""

    n_experts: int = 0
    """Routed experts E per MoE layer; 0 for a dense model."""
    top_k: int = 0
    """Activated routed experts per token E_a."""
    n_shared_experts: int = 0
    """Shared (always-on) experts E_s per MoE layer."""
    d_expert: int = 0
    """Intermediate width of one routed expert."""
    d_shared: int | None = None
    """Intermediate width of one shared expert; ``None`` means ``d_expert``."""
    n_dense_layers: int = 0
    """Leading dense layers before the first MoE layer (``first_k_dense_replace``)."""
    moe_every: int = 1
    """MoE layer frequency: among layers >= n_dense_layers, layer i is MoE iff
    i % moe_every == 0."""
    moe_layers: tuple[int, ...] | None = None
    """Explicit 0-based indices of the MoE blocks; overrides the ``n_dense_layers`` /
    ``moe_every`` rule (which must then keep their defaults). ``None``: use the rule."""
    router_bias: bool = False
    """Router linear has a bias (gpt-oss)."""
    expert_bias: bool = False
    """Expert projections have biases (gpt-oss)."""
    router_score_bias: bool = False
    """Per-expert selection bias tensor stored with the router (DeepSeek-V3
    ``e_score_correction_bias``; the aux-loss-free balancing bias of [LING2])."""
    shared_expert_gate: bool = False
    """Sigmoid gate (d -> 1) on the shared expert output (Qwen2-MoE)."""

    attention: AttentionKind = "gqa"
    """``gqa`` (covers MHA and MQA) or ``mla`` (DeepSeek multi-head latent attention)."""
    qk_norm: QKNorm = "none"
    """``none``; ``head``: RMSNorm over each head's q and k (Qwen3, Ling 2.0);
    ``full``: RMSNorm over the full q and k projections (OLMoE)."""
    qkv_bias: bool = False
    """Biases on the q, k, v projections (Qwen2, gpt-oss); with MLA, on q_a_proj and
    kv_a_proj_with_mqa (DeepSeek ``attention_bias``)."""
    o_bias: bool = False
    """Bias on the output projection (gpt-oss)."""
    attention_sinks: bool = False
    """One learned sink logit per query head (gpt-oss)."""
    sliding_window: int | None = None
    """Window of sliding-window layers; ``None`` for none."""
    sliding_every: int = 0
    """If > 0 and ``sliding_window`` is set, layer i uses the window iff i % sliding_every == 0
    (gpt-oss alternates: sliding_every = 2); 0 means every layer."""
    sliding_layers: tuple[int, ...] | None = None
    """Explicit 0-based indices of the sliding-window blocks; overrides ``sliding_every``
    (which must then be 0). Needs ``sliding_window``. ``None``: use ``sliding_every``."""
    local_attention: LocalAttention = "sliding"
    """What the ``sliding_window`` layers do: ``sliding`` (each query sees the last
    ``sliding_window`` keys) or ``chunked`` (queries see their own ``sliding_window``-token
    chunk, Llama 4's ``attention_chunk_size``). Both attend min(s, window) keys per query
    in the FLOPs convention (full context, no causal halving)."""
    nope_layers: tuple[int, ...] | None = None
    """0-based indices of layers that apply no rotary embedding (Llama 4, SmolLM3);
    parameters and FLOPs are unaffected."""
    rope_fraction: float = 1.0
    """Fraction of each head's dimensions rotated by RoPE (partial RoPE)."""
    rope_theta: float = 10000.0
    """RoPE base."""

    q_lora_rank: int | None = None
    """MLA: rank of the query down-projection (``None``: full-rank query)."""
    kv_lora_rank: int = 0
    """MLA: rank of the compressed KV latent."""
    qk_nope_head_dim: int = 0
    """MLA: per-head q/k dims without rotary embedding."""
    qk_rope_head_dim: int = 0
    """MLA: per-head q/k dims with rotary embedding (k part shared across heads)."""
    v_head_dim: int = 0
    """MLA: per-head value dims."""

    norm: NormKind = "rms"
    """``rms`` (RMSNorm) or ``layer`` (LayerNorm: Cohere, DBRX, PhiMoE)."""
    norm_bias: bool = False
    """Norms carry a bias as well as a weight (PhiMoE's LayerNorm)."""
    norms_per_layer: int = 2
    """Norms of width d in each block (2: pre-attention and pre-FFN; 4: Gemma 2/3 and
    GLM-4 add post-norms; 1: Cohere's parallel block)."""
    ffn_bias: bool = False
    """Biases on the dense FFN and shared-expert projections (Granite ``mlp_bias``,
    ERNIE 4.5 ``use_bias``). Shared experts count as one fused MLP: 2·E_s·d_shared + d."""
    head_bias: bool = False
    """Bias on the output head (PhiMoE ``lm_head_bias``, ERNIE 4.5 ``use_bias``)."""

    attention_gate: bool = False
    """Output gate on attention: ``q_proj`` also produces a sigmoid gate per channel
    (Qwen3-Next): + d·n_h·head_dim weights and 2·d·n_h·head_dim FLOPs per token."""

    mixer: MixerKind = "none"
    """Token mixer of the ``mixer_layers`` in a hybrid (the other blocks use attention):
    ``gated_deltanet`` (linear attention, Qwen3-Next), ``mamba`` (selective SSM, Jamba),
    ``mamba2`` (SSD, Nemotron-H) or ``lightning`` (gated linear attention over the spec's
    n_heads x head_dim, MiniMax-01).
    Parameters are exact; FLOPs follow ``docs/conventions.md`` (mixer kinds)."""
    mixer_layers: tuple[int, ...] | None = None
    """0-based indices of the blocks whose token mixer is ``mixer`` instead of attention."""
    mixer_conv: int = 0
    """Depthwise causal convolution width of the mixer (``linear_conv_kernel_dim``,
    ``mamba_d_conv``)."""
    linear_key_heads: int = 0
    """Gated DeltaNet: key (and query) heads."""
    linear_value_heads: int = 0
    """Gated DeltaNet: value heads (each keeps a key_dim x value_dim state)."""
    linear_key_dim: int = 0
    """Gated DeltaNet: per-head key dims."""
    linear_value_dim: int = 0
    """Gated DeltaNet: per-head value dims."""
    mamba_d_inner: int = 0
    """Mamba: inner width (``mamba_expand`` · d)."""
    mamba_d_state: int = 0
    """Mamba: SSM state size N per channel."""
    mamba_dt_rank: int = 0
    """Mamba: rank of the Δ projection."""
    mamba_proj_bias: bool = False
    """Mamba: biases on in_proj and out_proj."""
    mamba_conv_bias: bool = True
    """Mamba: bias on the depthwise convolution."""
    mamba_inner_norms: bool = False
    """Mamba: RMSNorms on Δ, B and C (Jamba): dt_rank + 2·d_state weights."""
    mamba_heads: int = 0
    """Mamba-2: heads H (d_inner = H x head dim)."""
    mamba_groups: int = 0
    """Mamba-2: groups G sharing B and C."""
    mamba_gated_norm: bool = True
    """Mamba-2: gated RMSNorm over d_inner before out_proj (Falcon-H1 may omit it)."""
    mixer_parallel: bool = False
    """The ``mixer_layers`` keep attention too, the two mixers running in parallel on the
    same input (Falcon-H1); otherwise the mixer replaces attention."""
    mixerless_layers: tuple[int, ...] | None = None
    """Blocks without a token mixer (neither attention nor ``mixer``): Nemotron-H's
    MLP-only and MoE-only blocks."""
    ffn_layers: tuple[int, ...] | None = None
    """Blocks that have an FFN sublayer (``None``: all). Nemotron-H's mixer blocks have
    none. With it, MoE blocks must be given as an explicit ``moe_layers`` subset."""
    gated_ffn: bool = True
    """FFNs (dense, routed and shared experts) are gated: 3 matrices (SwiGLU). ``False``:
    up and down only, 2 matrices (Nemotron-H's squared ReLU)."""

    n_mtp_layers: int = 0
    """Multi-token-prediction blocks (DeepSeek-V3, Ling 2.0). Excluded from every count
    unless a function is asked to include them explicitly."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Import provenance (source file, model_type); never used in counts."""

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "vocab_size"):
            check_range(name, getattr(self, name), low=1, integer=True)
        check_range("n_layers", self.n_layers, low=1, high=MAX_LAYERS, integer=True)
        self._check_types()
        for name in ("moe_layers", "sliding_layers", "nope_layers", "mixer_layers",
                     "mixerless_layers", "ffn_layers"):
            self._normalise_layer_list(name)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        check_range("n_kv_heads", self.n_kv_heads, low=1, high=self.n_heads, integer=True)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"'n_kv_heads' must divide 'n_heads' ({self.n_heads}); got {self.n_kv_heads}"
            )
        if self.attention not in ("gqa", "mla"):
            raise ConfigError(f"'attention' must be one of 'gqa', 'mla'; got {self.attention!r}")
        for name, allowed in (
            ("qk_norm", ("none", "head", "full", "l2")),
            ("norm", ("rms", "layer")),
            ("local_attention", ("sliding", "chunked")),
            ("mixer", ("none", "gated_deltanet", "mamba", "mamba2", "lightning")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name!r} must be one of {', '.join(map(repr, allowed))}; "
                    f"got {getattr(self, name)!r}"
                )
        check_range("norms_per_layer", self.norms_per_layer, low=0, high=8, integer=True)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"'n_heads' must divide 'd_model' ({self.d_model}) when 'head_dim' is not "
                    f"given; got n_heads={self.n_heads}"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        check_range("head_dim", self.head_dim, low=1, integer=True)
        check_range("d_ffn", self.d_ffn, low=0, integer=True)
        check_range("n_experts", self.n_experts, low=0, integer=True)
        check_range("n_dense_layers", self.n_dense_layers, low=0, high=self.n_layers, integer=True)
        check_range("moe_every", self.moe_every, low=1, integer=True)
        check_range("n_mtp_layers", self.n_mtp_layers, low=0, integer=True)
        check_range("rope_fraction", self.rope_fraction, low=0.0, high=1.0)
        check_range("rope_theta", self.rope_theta, low=0.0, low_inclusive=False)
        if self.moe_layers is not None:
            if not self.is_moe and self.moe_layers:
                raise ConfigError(
                    f"'moe_layers' must be empty for a dense spec (n_experts = 0); "
                    f"got {list(self.moe_layers)}"
                )
            if self.n_dense_layers or self.moe_every != 1:
                raise ConfigError(
                    "give either 'moe_layers' or 'n_dense_layers'/'moe_every', not both; got "
                    f"moe_layers={list(self.moe_layers)}, n_dense_layers={self.n_dense_layers}, "
                    f"moe_every={self.moe_every}"
                )
        if self.sliding_layers is not None:
            if self.sliding_window is None:
                raise ConfigError(
                    "'sliding_layers' needs 'sliding_window'; got sliding_window=None"
                )
            if self.sliding_every:
                raise ConfigError(
                    "give either 'sliding_layers' or 'sliding_every', not both; got "
                    f"sliding_every={self.sliding_every}"
                )
        if self.is_moe:
            check_range("top_k", self.top_k, low=1, high=self.n_experts, integer=True)
            check_range("d_expert", self.d_expert, low=1, integer=True)
            check_range("n_shared_experts", self.n_shared_experts, low=0, integer=True)
            if self.d_shared is None:
                object.__setattr__(self, "d_shared", self.d_expert)
            check_range("d_shared", self.d_shared, low=1, integer=True)
            if self.n_moe_layers == 0:
                layout = (
                    f"'moe_layers' ({list(self.moe_layers)}) leaves"
                    if self.moe_layers is not None
                    else f"'n_dense_layers' ({self.n_dense_layers}) and 'moe_every' "
                    f"({self.moe_every}) leave"
                )
                raise ConfigError(
                    f"the spec has experts but no MoE layer: {layout} none of the "
                    f"{self.n_layers} layers"
                )
        else:
            for name in ("top_k", "n_shared_experts", "d_expert"):
                if getattr(self, name):
                    raise ConfigError(
                        f"{name!r} must be 0 for a dense spec (n_experts = 0); "
                        f"got {getattr(self, name)}"
                    )
            if self.d_shared is None:
                object.__setattr__(self, "d_shared", 0)
        if self.n_dense_layer_count > 0:
            if self.d_ffn == 0:  # the default: the field was not given
                what = ("a dense spec (n_experts = 0)" if not self.is_moe else
                        f"the {self.n_dense_layer_count} dense layer(s) (n_dense_layers)")
                raise ConfigError(f"'d_ffn' (FFN width, an int >= 1) is required for {what}; "
                                  "it is missing (or 0)")
            check_range("d_ffn", self.d_ffn, low=1, integer=True)
        if self.sliding_window is not None:
            check_range("sliding_window", self.sliding_window, low=1, integer=True)
        check_range("sliding_every", self.sliding_every, low=0, integer=True)
        self._check_mixer()
        if self.attention == "mla":
            check_range("kv_lora_rank", self.kv_lora_rank, low=1, integer=True)
            check_range("qk_rope_head_dim", self.qk_rope_head_dim, low=0, integer=True)
            check_range("qk_nope_head_dim", self.qk_nope_head_dim, low=0, integer=True)
            check_range("v_head_dim", self.v_head_dim, low=1, integer=True)
            if self.qk_nope_head_dim + self.qk_rope_head_dim < 1:
                raise ConfigError("MLA needs qk_nope_head_dim + qk_rope_head_dim >= 1; got 0")
            if self.q_lora_rank is not None:
                check_range("q_lora_rank", self.q_lora_rank, low=1, integer=True)

    def _check_mixer(self) -> None:
        """A hybrid names its mixer layers and the sizes its mixer kind needs."""
        dims = {
            "gated_deltanet": ("mixer_conv", "linear_key_heads", "linear_value_heads",
                               "linear_key_dim", "linear_value_dim"),
            "mamba": ("mixer_conv", "mamba_d_inner", "mamba_d_state", "mamba_dt_rank"),
            "mamba2": ("mixer_conv", "mamba_d_inner", "mamba_d_state", "mamba_heads",
                       "mamba_groups"),
            "lightning": (),
        }
        if self.mixerless_layers and self.mixer_layers and set(self.mixerless_layers) & set(
                self.mixer_layers):
            raise ConfigError(
                "'mixerless_layers' and 'mixer_layers' must not share a layer; got "
                f"{sorted(set(self.mixerless_layers) & set(self.mixer_layers))}"
            )
        if self.ffn_layers is not None and self.is_moe:
            if self.moe_layers is None:
                raise ConfigError("'ffn_layers' needs an explicit 'moe_layers' list")
            extra = sorted(set(self.moe_layers) - set(self.ffn_layers))
            if extra:
                raise ConfigError(f"'moe_layers' must be a subset of 'ffn_layers'; got {extra}")
        if self.mixer == "none":
            if self.mixer_layers:
                raise ConfigError(
                    f"'mixer_layers' needs a 'mixer' kind; got mixer='none' and "
                    f"mixer_layers={list(self.mixer_layers)}"
                )
            return
        if not self.mixer_layers:
            raise ConfigError(f"mixer={self.mixer!r} needs a non-empty 'mixer_layers'")
        for name in dims[self.mixer]:
            check_range(name, getattr(self, name), low=1, integer=True)
        if self.sliding_window is not None:
            raise ConfigError(
                "a hybrid spec (mixer layers) with a sliding window is not supported; got "
                f"sliding_window={self.sliding_window}"
            )

    def _check_types(self) -> None:
        """Flags must be booleans and labels strings (TOML makes other types easy to write)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise ConfigError(f"{f.name!r} must be true or false; got {value!r}")
            if f.type in ("str", str) and not isinstance(value, str):
                raise ConfigError(f"{f.name!r} must be a string; got {value!r}")
            # 4.0 from a JSON/TOML writer means 4: keep counts integral.
            if f.type in ("int", "int | None") and isinstance(value, float) and value.is_integer():
                object.__setattr__(self, f.name, int(value))
            if (f.type in ("int", "int | None") and f.name != "n_layers"
                    and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value > MAX_SIZE):
                shown = f"{float(value):.6g}" if value > 1e15 else repr(value)
                raise ConfigError(f"{f.name!r} must be at most {MAX_SIZE:.0e}; got {shown}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"'extra' must be a table (dict); got {self.extra!r}")

    def _normalise_layer_list(self, name: str) -> None:
        """Turn a list of layer indices into a sorted tuple, checking each index."""
        value = getattr(self, name)
        if value is None:
            return
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{name!r} must be a list of layer indices; got {value!r}")
        items = list(value)
        for i in items:
            check_range(f"{name} entry", i, low=0, high=self.n_layers - 1, integer=True)
        if len(set(items)) != len(items):
            raise ConfigError(f"{name!r} must not repeat a layer index; got {items}")
        object.__setattr__(self, name, tuple(sorted(int(i) for i in items)))

    # ------------------------------------------------------------------ layout
    @property
    def is_moe(self) -> bool:
        """True when the spec has routed experts."""
        return self.n_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether block ``i`` (0-based) has an MoE FFN (see module docstring)."""
        if self.moe_layers is not None:
            return self.is_moe and i in self.moe_layers
        return self.is_moe and i >= self.n_dense_layers and i % self.moe_every == 0

    def is_rope_layer(self, i: int) -> bool:
        """Whether block ``i`` applies the rotary embedding (not a NoPE layer)."""
        return self.nope_layers is None or i not in self.nope_layers

    def is_sliding_layer(self, i: int) -> bool:
        """Whether block ``i`` uses sliding-window attention."""
        if self.sliding_window is None:
            return False
        if self.sliding_layers is not None:
            return i in self.sliding_layers
        return self.sliding_every == 0 or i % self.sliding_every == 0

    @property
    def n_moe_layers(self) -> int:
        """Number of MoE blocks (closed form)."""
        if not self.is_moe:
            return 0
        if self.moe_layers is not None:
            return len(self.moe_layers)
        return _count_multiples(self.moe_every, self.n_dense_layers, self.n_layers)

    def is_mixer_layer(self, i: int) -> bool:
        """Whether block ``i`` mixes tokens with ``mixer`` instead of attention."""
        return self.mixer_layers is not None and i in self.mixer_layers

    @property
    def n_mixer_layers(self) -> int:
        """Number of blocks with a non-attention token mixer."""
        return len(self.mixer_layers) if self.mixer_layers else 0

    @property
    def n_attention_layers(self) -> int:
        """Number of blocks with attention (all of them unless the spec is a hybrid)."""
        mixers = 0 if self.mixer_parallel else self.n_mixer_layers
        return self.n_layers - mixers - len(self.mixerless_layers or ())

    @property
    def n_ffn_layers(self) -> int:
        """Number of blocks with an FFN sublayer (all of them unless ``ffn_layers``)."""
        return self.n_layers if self.ffn_layers is None else len(self.ffn_layers)

    @property
    def n_sliding_layers(self) -> int:
        """Number of sliding-window (or chunked) attention blocks (closed form)."""
        if self.sliding_window is None:
            return 0
        if self.sliding_layers is not None:
            return len(self.sliding_layers)
        if self.sliding_every == 0:
            return self.n_layers
        return _count_multiples(self.sliding_every, 0, self.n_layers)

    @property
    def n_dense_layer_count(self) -> int:
        """Number of blocks with a dense FFN."""
        return self.n_ffn_layers - self.n_moe_layers

    # ------------------------------------------------------------------ ratios
    @property
    def activation_ratio(self) -> float:
        """A = E_a / E, routed only ([EL] Eq. 13 input); 1.0 for dense."""
        return self.top_k / self.n_experts if self.is_moe else 1.0

    @property
    def activation_ratio_formal(self) -> float:
        """A_formal = (E_a + E_s) / (E + E_s) ([EL] §2); 1.0 for dense."""
        if not self.is_moe:
            return 1.0
        return (self.top_k + self.n_shared_experts) / (self.n_experts + self.n_shared_experts)

    @property
    def granularity(self) -> float | None:
        """G = 2·d_model / d_expert ([EL] convention); ``None`` for dense."""
        return 2 * self.d_model / self.d_expert if self.is_moe else None

    @property
    def granularity_fg(self) -> float | None:
        """G_fg = 4·d_model / d_expert ([FG] convention, d_ffn = 4·d); ``None`` for dense."""
        return 4 * self.d_model / self.d_expert if self.is_moe else None

    @property
    def shared_ratio(self) -> float:
        """S = E_s / (E_a + E_s) ([EL]); 0.0 for dense."""
        if not self.is_moe:
            return 0.0
        return self.n_shared_experts / (self.top_k + self.n_shared_experts)

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (``extra`` included), for TOML/JSON records."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build from a dict; unknown keys are a :class:`ConfigError` naming them."""
        check_keys(data, (f.name for f in dataclasses.fields(cls)), "spec field")
        required = [
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(
                f"spec is missing required field(s) {', '.join(map(repr, missing))}; "
                f"required: {', '.join(required)}"
            )
        return cls(**data)
