"""Exact parameter and FLOP accounting for a :class:`ModelSpec`.

Parameters are counted per named group (``embedding``, ``head``, ``attention``,
``norms``, ``dense_ffn``, ``router``, ``routed_experts``, ``shared_experts``,
``mtp``) so that a test can check every group against the built PyTorch model.
Everything with a weight tensor is counted: routers, norms, biases, attention
sinks and selection biases. "Non-embedding" excludes the input embedding and
an untied output head ([EL]'s N and N_a, arXiv 2507.17702).

FLOPs per token, three named conventions (LAWS.md §2):

- ``ling`` — [EL] Appendix C, corrected: training, non-embedding, attention at
  sequence length s (full s, no causal halving), router excluded:
  ``M = 3·Σ_layers (attn_proj + attn_scores + ffn)`` with the projections at
  2 FLOPs per weight, scores ``2·s·n_h·d_qk + 2·s·n_h·d_v`` (= 4·s·d for
  standard heads), dense FFN ``6·d·d_ffn``, MoE FFN ``6·d·(E_a·d_expert +
  E_s·d_shared)``. Reduces exactly to LAWS.md §2 when n_h·head_dim = d.
  Sliding-window layers attend min(s, window) keys; MLA projections count the
  weights of its down- and up-projections.
- ``6n`` — 6 × active non-embedding parameters (Kaplan/Chinchilla style).
- ``fg`` — [FG] (arXiv 2402.07871) with router cost:
  ``6·N_act + c_r·d·E·n_moe_layers`` with c_r = 14, i.e.
  ``(6 + 14·E·G_fg/(12·d))·N_act`` for FG's shapes.

- ``full`` — every matmul of a training step: ``ling`` plus the output head
  (unembedding, ``2·d·V`` forward) and the router (``2·d·E`` forward per MoE layer,
  plus ``2·d`` for a shared-expert gate). The input embedding is a gather (0 FLOPs);
  MTP modules are excluded. At small d the head is 12-47% of a step ([EL]'s M leaves
  it out), so this is the sensitivity convention of issue #10 item 6.

Forward FLOPs are training FLOPs / 3 in every convention. ``docs/conventions.md``
lists what each group and each convention includes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moescale.errors import ConfigError, check_range
from moescale.spec.model_spec import ModelSpec

__all__ = [
    "ParamCounts",
    "count_params",
    "flops_per_token",
    "attention_flops_per_token",
    "FlopsConvention",
    "FLOPS_CONVENTIONS",
    "summary",
]

FlopsConvention = Literal["ling", "6n", "fg", "full"]
FLOPS_CONVENTIONS: tuple[str, ...] = ("ling", "6n", "fg", "full")
FG_ROUTER_COST = 14
"""c_r of [FG] Eq. 6 (FLOPs per router weight per token, training)."""


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts per group, total and active (active: top-k routed experts only)."""

    embedding: int
    head: int
    attention: int
    norms: int
    dense_ffn: int
    router: int
    routed_experts: int
    routed_experts_active: int
    shared_experts: int
    mtp: int = 0
    mixer: int = 0
    """Non-attention token mixers of a hybrid (gated DeltaNet, Mamba); absent from
    :meth:`as_dict` when 0."""

    @property
    def non_embedding(self) -> int:
        """Total non-embedding parameters (N of [EL])."""
        return (
            self.attention + self.norms + self.dense_ffn + self.router
            + self.routed_experts + self.shared_experts + self.mtp + self.mixer
        )

    @property
    def active_non_embedding(self) -> int:
        """Active non-embedding parameters per token (N_a of [EL])."""
        return self.non_embedding - self.routed_experts + self.routed_experts_active

    @property
    def total(self) -> int:
        """All parameters, embedding and untied head included."""
        return self.non_embedding + self.embedding + self.head

    @property
    def active(self) -> int:
        """Active parameters per token, embedding and untied head included."""
        return self.active_non_embedding + self.embedding + self.head

    def as_dict(self) -> dict[str, int]:
        """Groups and totals as a flat dict."""
        groups = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if not self.mixer:
            del groups["mixer"]
        groups.update(
            total=self.total,
            active=self.active,
            non_embedding=self.non_embedding,
            active_non_embedding=self.active_non_embedding,
        )
        return groups


def _attention_params(s: ModelSpec) -> int:
    """Weights of one attention block, its norms on latents, biases and sinks included."""
    d, nh, nkv, hd = s.d_model, s.n_heads, s.n_kv_heads, s.head_dim
    if s.attention == "mla":
        qk = s.qk_nope_head_dim + s.qk_rope_head_dim
        if s.q_lora_rank:
            q = d * s.q_lora_rank + s.q_lora_rank + s.q_lora_rank * nh * qk
        else:
            q = d * nh * qk
        kv = (
            d * (s.kv_lora_rank + s.qk_rope_head_dim)
            + s.kv_lora_rank
            + s.kv_lora_rank * nh * (s.qk_nope_head_dim + s.v_head_dim)
        )
        o = nh * s.v_head_dim * d
        # DeepSeek's ``attention_bias``: biases on q_a_proj (low-rank query only),
        # kv_a_proj_with_mqa and o_proj; the up-projections never have one.
        bias = (s.q_lora_rank or 0) + s.kv_lora_rank + s.qk_rope_head_dim if s.qkv_bias else 0
        return q + kv + o + bias + (d if s.o_bias else 0)
    n = d * nh * hd + 2 * d * nkv * hd + nh * hd * d
    if s.attention_gate:  # the gate is a second half of q_proj, bias included
        n += d * nh * hd + (nh * hd if s.qkv_bias else 0)
    if s.qkv_bias:
        n += nh * hd + 2 * nkv * hd
    if s.o_bias:
        n += d
    if s.attention_sinks:
        n += nh
    if s.qk_norm == "head":
        n += 2 * hd
    elif s.qk_norm == "full":
        n += nh * hd + nkv * hd
    return n


def _mixer_params(s: ModelSpec) -> int:
    """One non-attention token mixer (see ``docs/conventions.md``, mixer kinds)."""
    d, k = s.d_model, s.mixer_conv
    if s.mixer == "gated_deltanet":
        kd = s.linear_key_heads * s.linear_key_dim
        vd = s.linear_value_heads * s.linear_value_dim
        nv = s.linear_value_heads
        # in_proj_qkvz, in_proj_ba, depthwise conv over q/k/v, dt_bias + A_log,
        # gated RMSNorm (value head width), out_proj
        return (d * (2 * kd + 2 * vd) + d * 2 * nv + (2 * kd + vd) * k + 2 * nv
                + s.linear_value_dim + vd * d)
    if s.mixer == "mamba":
        di, n, r = s.mamba_d_inner, s.mamba_d_state, s.mamba_dt_rank
        total = (d * 2 * di + di * k + di * (r + 2 * n) + r * di + di  # in, conv, x, dt
                 + di * n + di + di * d)  # A_log, D, out
        if s.mamba_proj_bias:
            total += 2 * di + d
        if s.mamba_conv_bias:
            total += di
        if s.mamba_inner_norms:
            total += r + 2 * n
        return total
    if s.mixer == "mamba2":
        di, n, h, g = s.mamba_d_inner, s.mamba_d_state, s.mamba_heads, s.mamba_groups
        conv = di + 2 * g * n
        # in_proj (x, z, B, C, dt), conv (+ bias), dt_bias + A_log + D, gated norm, out
        total = d * (2 * di + 2 * g * n + h) + conv * k + 3 * h + di * d
        if s.mamba_gated_norm:
            total += di
        if s.mamba_conv_bias:
            total += conv
        if s.mamba_proj_bias:
            total += 2 * di + 2 * g * n + h + d
        return total
    if s.mixer == "lightning":  # qkv, output gate, out_proj, RMSNorm over n_h * h
        width = s.n_heads * s.head_dim
        return 5 * d * width + width
    return 0


def _mixer_flops(s: ModelSpec) -> int:
    """Forward FLOPs per token of one mixer: 2 per projection weight, 2·kernel per
    convolved channel, and the recurrent state: gated DeltaNet 6·n_v·d_k·d_v (read,
    rank-1 update and readout of each head's d_k x d_v state); Mamba 6·d_inner·N
    (state update h = Ā·h + B̄·x and readout y = C·h), Mamba-2 the same 6·d_inner·N;
    lightning 4·n_h·h² (rank-1
    update and readout of each head's h x h state)."""
    d, k = s.d_model, s.mixer_conv
    if s.mixer == "gated_deltanet":
        kd = s.linear_key_heads * s.linear_key_dim
        vd = s.linear_value_heads * s.linear_value_dim
        nv = s.linear_value_heads
        proj = d * (2 * kd + 2 * vd) + d * 2 * nv + vd * d
        return 2 * proj + 2 * k * (2 * kd + vd) + 6 * nv * s.linear_key_dim * s.linear_value_dim
    if s.mixer == "mamba":
        di, n, r = s.mamba_d_inner, s.mamba_d_state, s.mamba_dt_rank
        proj = d * 2 * di + di * (r + 2 * n) + r * di + di * d
        return 2 * proj + 2 * k * di + 6 * di * n
    if s.mixer == "mamba2":
        di, n, h, g = s.mamba_d_inner, s.mamba_d_state, s.mamba_heads, s.mamba_groups
        proj = d * (2 * di + 2 * g * n + h) + di * d
        return 2 * proj + 2 * k * (di + 2 * g * n) + 6 * di * n
    if s.mixer == "lightning":
        return 2 * 5 * d * s.n_heads * s.head_dim + 4 * s.n_heads * s.head_dim ** 2
    return 0


def _mtp_params(s: ModelSpec) -> int:
    """DeepSeek-V3-style MTP block: two input norms, a 2d->d projection, one MoE (or
    dense) block and a final norm; embedding and head are shared with the main model."""
    if not s.n_mtp_layers:
        return 0
    d = s.d_model
    block = _attention_params(s) + 2 * d
    if s.is_moe:
        block += _moe_params(s, active=False)
    else:
        block += _dense_ffn_params(s)
    return s.n_mtp_layers * (block + 2 * d + 2 * d * d + d)


def _mats(s: ModelSpec) -> int:
    """Matrices of one FFN: 3 gated (gate, up, down), 2 ungated (up, down)."""
    return 3 if s.gated_ffn else 2


def _expert_params(s: ModelSpec) -> int:
    """One routed expert: SwiGLU (gate, up, down), plus biases where the spec has them."""
    bias = ((_mats(s) - 1) * s.d_expert + s.d_model) if s.expert_bias else 0
    return _mats(s) * s.d_model * s.d_expert + bias


def _router_params(s: ModelSpec) -> int:
    """One router: d x E logits, optional bias and optional selection (score) bias."""
    n = s.d_model * s.n_experts
    return n + (s.n_experts if s.router_bias else 0) + (s.n_experts if s.router_score_bias else 0)


def _shared_params(s: ModelSpec) -> int:
    """All shared experts of one MoE layer, with Qwen2-MoE's shared gate if present.

    With ``ffn_bias`` the shared experts are one fused MLP (ERNIE 4.5): 2·E_s·d_s + d biases.
    """
    if not s.n_shared_experts:
        return 0
    n = s.n_shared_experts * _mats(s) * s.d_model * s.d_shared
    if s.ffn_bias:
        n += (_mats(s) - 1) * s.n_shared_experts * s.d_shared + s.d_model
    return n + (s.d_model if s.shared_expert_gate else 0)


def _dense_ffn_params(s: ModelSpec) -> int:
    """One dense SwiGLU FFN (gate, up, down), with biases when ``ffn_bias``."""
    bias = ((_mats(s) - 1) * s.d_ffn + s.d_model) if s.ffn_bias else 0
    return _mats(s) * s.d_model * s.d_ffn + bias


def _norm_params(s: ModelSpec) -> int:
    """One norm of width d (weight, plus a bias for LayerNorm with bias)."""
    return s.d_model * (2 if s.norm_bias else 1)


def _moe_params(s: ModelSpec, *, active: bool) -> int:
    k = s.top_k if active else s.n_experts
    return k * _expert_params(s) + _router_params(s) + _shared_params(s)


def count_params(spec: ModelSpec, *, include_mtp: bool = False) -> ParamCounts:
    """Count parameters of ``spec`` per group.

    Parameters
    ----------
    spec : ModelSpec
    include_mtp : bool
        Count the multi-token-prediction blocks (their own weights only; they share
        embedding and head). Off by default: published "main model" totals exclude them.

    Examples
    --------
    >>> from moescale.spec.presets import ling_mini_beta
    >>> round(count_params(ling_mini_beta()).non_embedding / 1e9, 1)
    17.5
    """
    s = spec
    d = s.d_model
    n_moe = s.n_moe_layers
    per_expert = _expert_params(s)
    return ParamCounts(
        embedding=s.vocab_size * d,
        head=(0 if s.tie_embeddings else s.vocab_size * d) + (s.vocab_size if s.head_bias else 0),
        attention=s.n_attention_layers * _attention_params(s),
        norms=(s.norms_per_layer * s.n_layers + 1) * _norm_params(s),
        dense_ffn=s.n_dense_layer_count * _dense_ffn_params(s),
        router=n_moe * _router_params(s),
        routed_experts=n_moe * s.n_experts * per_expert,
        routed_experts_active=n_moe * s.top_k * per_expert,
        shared_experts=n_moe * _shared_params(s),
        mtp=_mtp_params(s) if include_mtp else 0,
        mixer=s.n_mixer_layers * _mixer_params(s),
    )


def _context(s: ModelSpec, i: int, seq_len: int) -> int:
    """Keys attended per query in layer i at sequence length s (full s, no causal halving).

    Sliding-window and chunked layers both attend min(s, window) keys.
    """
    if s.is_sliding_layer(i):
        return min(seq_len, s.sliding_window)
    return seq_len


def attention_flops_per_token(spec: ModelSpec, seq_len: int, layer: int = 0) -> tuple[int, int]:
    """Forward FLOPs per token of one attention block: (projections, scores).

    Projections are 2 FLOPs per weight (biases, norms and sinks excluded); scores are
    ``2·ctx·n_h·d_qk + 2·ctx·n_h·d_v`` with ctx the keys attended (full sequence).
    """
    return _attention_flops(spec, _context(spec, layer, seq_len))


def _attention_flops(s: ModelSpec, ctx: int) -> tuple[int, int]:
    """(projections, scores) forward FLOPs per token with ``ctx`` keys per query."""
    d, nh, nkv, hd = s.d_model, s.n_heads, s.n_kv_heads, s.head_dim
    if s.attention == "mla":
        qk = s.qk_nope_head_dim + s.qk_rope_head_dim
        q = d * s.q_lora_rank + s.q_lora_rank * nh * qk if s.q_lora_rank else d * nh * qk
        kv = d * (s.kv_lora_rank + s.qk_rope_head_dim) + s.kv_lora_rank * nh * (
            s.qk_nope_head_dim + s.v_head_dim
        )
        proj = 2 * (q + kv + nh * s.v_head_dim * d)
        d_qk, d_v = qk, s.v_head_dim
    else:
        proj = 2 * (2 * d * nh * hd + 2 * d * nkv * hd + (d * nh * hd if s.attention_gate else 0))
        d_qk = d_v = hd
    return proj, 2 * ctx * nh * d_qk + 2 * ctx * nh * d_v


def _ling_forward(s: ModelSpec, seq_len: int) -> int:
    """Σ_layers (mixer + ffn), forward, in closed form: layers are grouped by kind
    (full, local or no attention; hybrid mixer; MoE or dense FFN) and each group's
    per-layer cost is multiplied by its size."""
    d = s.d_model
    n_slide = s.n_sliding_layers
    n_att = s.n_attention_layers
    proj, full_scores = _attention_flops(s, seq_len)
    total = n_att * proj + (n_att - n_slide) * full_scores + s.n_mixer_layers * _mixer_flops(s)
    if n_slide:
        total += n_slide * _attention_flops(s, min(seq_len, s.sliding_window))[1]
    m = 2 * _mats(s)  # FLOPs per token per (d x width) of FFN: 6 gated, 4 ungated
    moe = m * d * (s.top_k * s.d_expert + s.n_shared_experts * s.d_shared)
    return total + s.n_moe_layers * moe + s.n_dense_layer_count * m * d * s.d_ffn


def flops_per_token(
    spec: ModelSpec,
    *,
    convention: FlopsConvention = "ling",
    seq_len: int = 4096,
    training: bool = True,
) -> float:
    """FLOPs per token of ``spec`` in a named convention (see module docstring).

    Parameters
    ----------
    convention : {"ling", "6n", "fg", "full"}
        ``ling`` is [EL]'s M (C = M·D); ``6n`` is 6·N_active (non-embedding);
        ``fg`` is [FG]'s with router cost; ``full`` is ``ling`` plus head and router.
    seq_len : int
        Sequence length s for the attention-score term (``ling`` and ``full``).
    training : bool
        Training FLOPs (forward + backward = 3 × forward) or forward only.

    Examples
    --------
    >>> from moescale.spec.presets import ling_mini_beta
    >>> m = flops_per_token(ling_mini_beta(), seq_len=4096)
    """
    check_range("seq_len", seq_len, low=1, integer=True)
    if convention == "ling":
        train = 3 * _ling_forward(spec, seq_len)
    elif convention == "full":
        gating = spec.n_experts + (1 if spec.shared_expert_gate else 0)
        head = 2 * spec.d_model * spec.vocab_size
        router = 2 * spec.d_model * gating * spec.n_moe_layers
        train = 3 * (_ling_forward(spec, seq_len) + head + router)
    elif convention == "6n":
        train = 6 * count_params(spec).active_non_embedding
    elif convention == "fg":
        n_act = count_params(spec).active_non_embedding
        train = 6 * n_act + FG_ROUTER_COST * spec.d_model * spec.n_experts * spec.n_moe_layers
    else:
        raise ConfigError(
            f"'convention' must be one of {', '.join(FLOPS_CONVENTIONS)}; got {convention!r}"
        )
    return float(train if training else train / 3)


def summary(spec: ModelSpec, *, seq_len: int = 4096, include_mtp: bool = False) -> dict:
    """The ``moescale count --json`` record: params, ratios and FLOPs per token.

    Keys (public interface): ``total_params``, ``active_params``,
    ``total_params_non_embedding``, ``active_params_non_embedding``,
    ``activation_ratio`` (E_a/E), ``activation_ratio_formal``, ``parameter_ratio``,
    ``granularity`` (2·d/d_expert), ``granularity_fg`` (4·d/d_expert), ``shared_ratio``,
    ``flops_per_token`` (Ling M, training, non-embedding, at ``seq_len``),
    ``flops_per_token_6n``, ``flops_per_token_fg``, ``flops_per_token_forward``,
    ``seq_len``, and ``params_by_group``.
    """
    pc = count_params(spec, include_mtp=include_mtp)
    m = flops_per_token(spec, convention="ling", seq_len=seq_len)
    return {
        "name": spec.name,
        "total_params": pc.total,
        "active_params": pc.active,
        "total_params_non_embedding": pc.non_embedding,
        "active_params_non_embedding": pc.active_non_embedding,
        "activation_ratio": spec.activation_ratio,
        "activation_ratio_formal": spec.activation_ratio_formal,
        "parameter_ratio": pc.active / pc.total,
        "granularity": spec.granularity,
        "granularity_fg": spec.granularity_fg,
        "shared_ratio": spec.shared_ratio,
        "flops_per_token": m,
        "flops_per_token_6n": flops_per_token(spec, convention="6n"),
        "flops_per_token_fg": flops_per_token(spec, convention="fg"),
        "flops_per_token_forward": m / 3,
        "seq_len": seq_len,
        "include_mtp": include_mtp,
        "params_by_group": pc.as_dict(),
    }
