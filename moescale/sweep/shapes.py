"""Backbone shapes: smooth IsoFLOP-ladder rungs, and the grid search that hits a target M.

**Ladder rungs** (:func:`rung_backbone`, what IsoFLOP ladders use): rung k has
``d_model = k·d_step`` and ``n_layers = max(1, ⌊d_model/aspect + ½⌉)``, heads =
d_model/head_dim; the FFN is a fixed multiple of d_model (dense ``d_ffn =
ffn_ratio·d_model``; MoE ``d_expert = 2·d_model/G``). Every rung of a ladder is one
shape family with d_model in regular steps, so rungs differ in size only, never in
shape ([EL] §2 IsoFLOP profiles, arXiv 2507.17702).

**Grid search** (:func:`dense_shape`, :func:`moe_backbone`, for single-size families):

at CPU scale the compute-optimal sizes of [EL] Table 1 (arXiv 2507.17702) are
tiny (dense ``M_opt(1e12) ≈ 2.1e5`` FLOPs/token, i.e. d ≈ 32, two layers), so
sizes cannot be read off a published family; they are searched. For a target
M the search scans a grid of ``(d_model, n_layers)`` (heads = d_model/head_dim)
and scores each candidate by

    |ln(M / M_target)| + aspect_weight · |ln((d_model / n_layers) / aspect)|

so that M is matched first and, among near-equal candidates, the one closest to
the preferred aspect ratio wins. For a dense model the FFN width ``d_ffn`` is
then solved from M exactly (rounded to a multiple of 8, within
``ffn_ratio``·d_model), so dense M lands within a fraction of a percent. For an
MoE family the active FFN width is a fixed multiple of d_model (e.g. E_a·2d/G),
so all members share one backbone and hence exactly one M; only the backbone
is searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moescale.errors import ConfigError
from moescale.spec.accounting import flops_per_token
from moescale.spec.model_spec import ModelSpec

__all__ = ["ShapeGrid", "Backbone", "dense_shape", "moe_backbone", "attention_m",
           "rung_backbone"]


@dataclass(frozen=True, kw_only=True)
class ShapeGrid:
    """Head layout of every backbone, and the grid single-size families search.

    The search picks ``(d_model, n_layers)`` from the grid (heads = d_model /
    head_dim) minimising ``|ln(M/M_target)| + aspect_weight·|ln((d/L)/aspect)|``,
    then (dense only) tunes ``d_ffn`` within ``ffn_ratio`` to hit M closely.
    """

    d_model: tuple[int, ...] = (32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)
    """Candidate hidden sizes (each a multiple of ``head_dim``)."""
    n_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12)
    """Candidate depths."""
    head_dim: int = 16
    """Per-head width; n_heads = d_model / head_dim (n_kv_heads = n_heads / kv_group)."""
    kv_group: int = 1
    """Query heads per KV head (1 = MHA); must divide every n_heads."""
    aspect: float = 32.0
    """Preferred d_model / n_layers at this scale (also the ladders' default aspect)."""
    aspect_weight: float = 0.15
    """Weight of the aspect-ratio penalty against the log-M mismatch."""
    ffn_ratio: tuple[float, float] = (2.0, 4.0)
    """Allowed range of dense d_ffn / d_model when tuning M (nominal 8/3, SwiGLU)."""


@dataclass(frozen=True)
class Backbone:
    """A searched backbone: width, depth, heads, and its Ling M."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    m: float
    score: float


def _heads(d: int, grid: ShapeGrid) -> tuple[int, int]:
    nh = d // grid.head_dim
    return nh, nh // grid.kv_group


def attention_m(d: int, n_layers: int, grid: ShapeGrid, seq_len: int, vocab_size: int) -> float:
    """Ling M of the attention blocks alone (training, all layers)."""
    nh, nkv = _heads(d, grid)
    probe = ModelSpec(d_model=d, n_layers=n_layers, n_heads=nh, n_kv_heads=nkv,
                      vocab_size=vocab_size, d_ffn=1)
    return flops_per_token(probe, seq_len=seq_len) - 3 * n_layers * 6 * d * 1


def rung_backbone(k: int, *, d_step: int, aspect: float) -> tuple[int, int]:
    """``(d_model, n_layers)`` of ladder rung ``k`` (k >= 1): ``d = k·d_step``,
    ``L = max(1, ⌊d/aspect + ½⌋)`` (half rounds up, so rungs never shrink in depth).

    >>> [rung_backbone(k, d_step=8, aspect=16) for k in (2, 3, 4, 6)]
    [(16, 1), (24, 2), (32, 2), (48, 3)]
    """
    d = k * d_step
    return d, max(1, math.floor(d / aspect + 0.5))


def _score(m: float, target: float, d: int, n_layers: int, grid: ShapeGrid) -> float:
    return abs(math.log(m / target)) + grid.aspect_weight * abs(
        math.log((d / n_layers) / grid.aspect)
    )


def dense_shape(
    m_target: float, *, seq_len: int, vocab_size: int, grid: ShapeGrid, name: str = ""
) -> ModelSpec:
    """The dense SwiGLU spec of the grid whose Ling M is closest to ``m_target``.

    ``d_ffn`` is solved from ``M = M_attn + 18·L·d·d_ffn`` and rounded to a multiple
    of 8 within ``grid.ffn_ratio``·d_model.

    Examples
    --------
    >>> s = dense_shape(2e5, seq_len=128, vocab_size=256, grid=ShapeGrid())
    >>> abs(flops_per_token(s, seq_len=128) / 2e5 - 1) < 0.05
    True
    """
    best: tuple[float, ModelSpec] | None = None
    lo, hi = grid.ffn_ratio
    for d in grid.d_model:
        for n_layers in grid.n_layers:
            m_attn = attention_m(d, n_layers, grid, seq_len, vocab_size)
            per_ffn = 18 * n_layers * d
            want = (m_target - m_attn) / per_ffn
            d_ffn = int(round(min(max(want, lo * d), hi * d) / 8) * 8)
            d_ffn = max(d_ffn, 8)
            m = m_attn + per_ffn * d_ffn
            score = _score(m, m_target, d, n_layers, grid)
            if best is None or score < best[0]:
                nh, nkv = _heads(d, grid)
                spec = ModelSpec(name=name, d_model=d, n_layers=n_layers, n_heads=nh,
                                 n_kv_heads=nkv, vocab_size=vocab_size, d_ffn=d_ffn)
                best = (score, spec)
    if best is None:
        raise ConfigError("the [shape] grid is empty")
    return best[1]


def moe_backbone(
    m_target: float,
    *,
    seq_len: int,
    vocab_size: int,
    grid: ShapeGrid,
    active_ffn_per_d: float,
    divisor: int = 1,
    min_layers: int = 1,
) -> Backbone:
    """Backbone for an MoE family whose per-layer active FFN width is
    ``active_ffn_per_d·d_model`` (e.g. ``(E_a+E_s)·2/G``).

    ``divisor`` must divide ``2·d_model`` (so that ``d_expert = 2d/G`` is an integer for
    every G of the family); ``min_layers`` leaves room for leading dense layers.
    """
    best: Backbone | None = None
    for d in grid.d_model:
        if (2 * d) % divisor:
            continue
        for n_layers in grid.n_layers:
            if n_layers < min_layers:
                continue
            m = attention_m(d, n_layers, grid, seq_len, vocab_size) + 18 * n_layers * d * (
                active_ffn_per_d * d
            )
            score = _score(m, m_target, d, n_layers, grid)
            if best is None or score < best.score:
                nh, nkv = _heads(d, grid)
                best = Backbone(d, n_layers, nh, nkv, m, score)
    if best is None:
        raise ConfigError(
            f"no d_model in the [shape] grid makes 2·d_model divisible by {divisor} "
            f"with at least {min_layers} layers; add suitable d_model values"
        )
    return best
