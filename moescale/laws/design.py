"""``moescale design``: concrete, buildable MoE architectures for a compute budget.

Three searches, one per law (every count comes from :mod:`moescale.spec.accounting`):

- ``ling2025`` ([EL], arXiv 2507.17702): size the active compute with Table 1's MoE
  M_opt(C) (Ling M at ``seq_len``), grid over E, top-k, shared ∈ {0, 1}, G and d_model
  (layers set so that M ≈ M_opt), tokens D = C/M, rank by Eq. 13 EL; ties (EL equal to
  3 significant digits) prefer one shared expert ([EL] §4.3 finding), then fewer total
  parameters, then an aspect ratio d/L near 100 (Ling 2.0: 102-128). By default only
  A and G inside the law's fitted grid are proposed (``allow_extrapolation``).
- ``fg`` ([FG], arXiv 2402.07871): C in FG FLOPs (router included); for each
  G_fg = 1, 2, 4, ..., the loss-minimising FG shape (d = 64·n_blocks, E = 64, top-G_fg
  of 64·G_fg experts of width 4d/G_fg), rank by FG loss: the best G_fg is Table 2's.
- ``joint`` ([JOINT], arXiv 2502.05172): C = 6·N_act·D; for E ∈ {1, 2, 4, ..., 32} the
  closed-form N_act optimum realised as JOINT's shape (d/64 blocks, top-1, experts of
  width 3d, vocabulary 50,257), rank by JOINT loss.

Memory model: training state = 16 bytes per total parameter (bf16 weights 2 + bf16
gradients 2 + fp32 master weights 4 + fp32 Adam moments 8), no activations, KV cache or
sharding; ``memory_gb`` is in GB = 1e9 bytes. Learning rate and batch (tokens) always
come from [EL] Eq. 3 at the candidate's Ling compute C = M·D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from moescale.errors import ConfigError, check_range
from moescale.laws.base import COMPUTE_MAX, check_positive
from moescale.laws.el import ELLaw
from moescale.laws.fg import FGLaw, fg_shape
from moescale.laws.hparams import AllocationLaw, HyperparameterLaw
from moescale.laws.joint import JOINT_VOCAB, JointLaw
from moescale.spec.accounting import count_params, flops_per_token
from moescale.spec.model_spec import ModelSpec
from moescale.spec.presets import LING2_VOCAB

__all__ = ["DesignConstraints", "design", "DESIGN_LAWS", "BYTES_PER_PARAM"]

DESIGN_LAWS = ("ling2025", "fg", "joint")
BYTES_PER_PARAM = 16
"""bf16 weights (2) + bf16 grads (2) + fp32 master (4) + fp32 Adam m and v (8)."""
DESIGN_COMPUTE_MIN = 1e6
"""Smallest budget designed for: a few tokens of the smallest shape (d = 64, one block);
below it every candidate trains on less than one token."""
MAX_LAYERS = 100_000
"""Deepest candidate proposed (Ling 2.0 models have 20-80 layers)."""
ASPECT_TARGET = 100.0
"""Target d_model / n_layers (Ling 2.0 models: 102, 128, 102)."""

EXPERTS = (8, 16, 32, 64, 128, 256, 384, 512)
TOP_K = (1, 2, 4, 6, 8, 12, 16)
SHARED = (0, 1)
GRANULARITY = (2, 4, 6, 8, 12, 16)
D_MODELS = (256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120, 6144,
            7168, 8192, 10240, 12288, 16384)


@dataclass(frozen=True, kw_only=True)
class DesignConstraints:
    """Budget and limits of a design search."""

    compute: float
    """Training compute C (Ling M·D for ling2025, FG FLOPs for fg, 6·N_act·D for joint)."""
    max_total_params: float | None = None
    """Upper bound on total parameters (embedding and head included)."""
    max_active_params: float | None = None
    """Upper bound on active parameters (embedding and head included)."""
    memory_gb: float | None = None
    """Upper bound on training-state memory, 16 bytes x total params, GB = 1e9 bytes."""
    seq_len: int = 4096
    """Sequence length s of Ling's M."""

    def __post_init__(self) -> None:
        check_range("compute", self.compute, low=DESIGN_COMPUTE_MIN, high=COMPUTE_MAX)
        for name in ("max_total_params", "max_active_params", "memory_gb"):
            v = getattr(self, name)
            if v is not None:
                check_positive(name, v)
        check_range("seq_len", self.seq_len, low=1, integer=True)

    def admits(self, total: int, active: int) -> bool:
        if self.max_total_params is not None and total > self.max_total_params:
            return False
        if self.max_active_params is not None and active > self.max_active_params:
            return False
        return not (
            self.memory_gb is not None and total * BYTES_PER_PARAM / 1e9 > self.memory_gb
        )


def _heads(d: int, head_dim: int) -> tuple[int, int]:
    n_heads = d // head_dim
    for kv in (8, 4, 2, 1):
        if n_heads % kv == 0 and kv <= max(1, n_heads // 4):
            return n_heads, kv
    return n_heads, 1


def _gqa_spec(d: int, layers: int, E: int, k: int, s: int, d_expert: int, vocab: int,
              name: str = "") -> ModelSpec:
    head_dim = 128 if d >= 1024 else 64
    n_heads, n_kv = _heads(d, head_dim)
    return ModelSpec(name=name, d_model=d, n_layers=layers, n_heads=n_heads, n_kv_heads=n_kv,
                     head_dim=head_dim, vocab_size=vocab, n_experts=E, top_k=k,
                     n_shared_experts=s, d_expert=d_expert)


@lru_cache(maxsize=8192)
def _layer_flops(d: int, k: int, s: int, d_expert: int, seq_len: int) -> float:
    """Ling M of one MoE block (the router is excluded from M, so E does not enter)."""
    return flops_per_token(_gqa_spec(d, 1, max(k, 1), k, s, d_expert, 256), seq_len=seq_len)


def _record(spec: ModelSpec, *, law: str, tokens: float, seq_len: int) -> dict:
    pc = count_params(spec)
    m = flops_per_token(spec, convention="ling", seq_len=seq_len)
    hp = HyperparameterLaw.published()
    c_ling = m * tokens
    return {
        "law": law,
        "experts": spec.n_experts,
        "top_k": spec.top_k,
        "shared_experts": spec.n_shared_experts,
        "d_model": spec.d_model,
        "layers": spec.n_layers,
        "d_expert": spec.d_expert,
        "d_ffn": spec.d_ffn,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "activation_ratio": spec.activation_ratio,
        "granularity": spec.granularity,
        "granularity_fg": spec.granularity_fg,
        "total_params": pc.total,
        "active_params": pc.active,
        "total_params_non_embedding": pc.non_embedding,
        "active_params_non_embedding": pc.active_non_embedding,
        "memory_gb": pc.total * BYTES_PER_PARAM / 1e9,
        "flops_per_token": m,
        "flops_convention": "ling",
        "seq_len": seq_len,
        "tokens": tokens,
        "compute_ling": c_ling,
        "learning_rate": float(hp.learning_rate(c_ling)),
        "batch_tokens": float(hp.batch_tokens(c_ling)),
        "hparams_source": "[EL] Eq. 3 at the candidate's Ling compute M*D",
        "spec": spec.to_dict(),
    }


# ---------------------------------------------------------------------- ling2025
def _design_ling(cons: DesignConstraints, *, vocab: int, allow_extrapolation: bool) -> list:
    law = ELLaw.published("ling2025")
    C = float(cons.compute)
    m_opt = float(AllocationLaw.published("moe").flops_per_token(C))
    a_range = law.fitted_range.interval("activation_ratio")
    g_range = law.fitted_range.interval("granularity")
    out = []
    for E in EXPERTS:
        for k in TOP_K:
            if k > E or (not allow_extrapolation and not a_range.contains(k / E)):
                continue
            for s in SHARED:
                for g in GRANULARITY:
                    options = []
                    for d in D_MODELS:
                        d_expert = max(32, 32 * round(2 * d / g / 32))
                        G = 2 * d / d_expert
                        if not allow_extrapolation and not g_range.contains(G):
                            continue
                        m1 = _layer_flops(d, k, s, d_expert, cons.seq_len)
                        layers = round(m_opt / m1)
                        if not 2 <= layers <= MAX_LAYERS:
                            continue
                        options.append((abs(math.log(d / layers / ASPECT_TARGET)), d, layers,
                                        d_expert))
                    for _, d, layers, d_expert in sorted(options)[:3]:
                        spec = _gqa_spec(d, layers, E, k, s, d_expert, vocab)
                        pc = count_params(spec)
                        if not cons.admits(pc.total, pc.active):
                            continue
                        m = flops_per_token(spec, seq_len=cons.seq_len)
                        rec = _record(spec, law="ling2025", tokens=C / m, seq_len=cons.seq_len)
                        el = float(law.predict(spec.activation_ratio, spec.granularity, C))
                        rep = law.check_range(spec.activation_ratio, spec.granularity, C)
                        rec.update(compute=C, flops_per_token_optimal=m_opt, predicted_el=el,
                                   in_fitted_range=rep.inside,
                                   range_warnings=list(rep.violations))
                        key = (-float(f"{el:.3g}"), -s, pc.total,
                               abs(math.log(d / layers / ASPECT_TARGET)))
                        out.append((key, rec))
                        break
    out.sort(key=lambda t: t[0])
    return [rec for _, rec in out]


# ---------------------------------------------------------------------- fg
_FG_MAX_BLOCKS = 100_000
"""Search bound of FG's shape (d = 64·n, n blocks); the unconstrained search used 1e5."""


def _counts(spec: ModelSpec) -> tuple[int, int]:
    pc = count_params(spec)
    return pc.total, pc.active


def _largest_admissible(admits, hi: int) -> int:
    """Largest n in [1, hi] with ``admits(n)`` for a predicate true up to some n (params
    grow with n); 0 when even n = 1 is refused. Bisection: O(log hi) counts."""
    if not admits(1):
        return 0
    if admits(hi):
        return hi
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if admits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _design_fg(cons: DesignConstraints, *, vocab: int) -> list:
    from scipy.optimize import minimize_scalar  # lazy: ~0.3 s import

    law = FGLaw.published("moe_e64")
    E = law.coefficients.E
    F = float(cons.compute)
    out = []
    for G in (2**i for i in range(9)):

        def obj(x: float, G: int = G) -> float:
            return float(law.loss_at_shape(math.exp(x), G, F))

        def spec_at(n: int, G: int = G) -> ModelSpec:
            d = 64 * n
            return ModelSpec(d_model=d, n_layers=n, n_heads=n, head_dim=64, vocab_size=vocab,
                             n_experts=E * G, top_k=G, n_shared_experts=0, d_expert=4 * d // G)

        # The limits are part of the search: parameters grow with n, so the admissible
        # shapes are n <= n_cap and the loss (one minimum in ln n) is least at
        # min(n_opt, n_cap).
        n_cap = _largest_admissible(lambda n: cons.admits(*_counts(spec_at(n))), _FG_MAX_BLOCKS)
        if n_cap < 1:
            continue
        res = minimize_scalar(obj, bounds=(0.0, math.log(n_cap)), method="bounded",
                              options={"xatol": 1e-9}) if n_cap > 1 else None
        n_opt = math.exp(res.x) if res is not None else 1.0
        for n in sorted({max(1, math.floor(n_opt)), min(n_cap, max(1, math.ceil(n_opt)))}):
            d = 64 * n
            if (4 * d) % G:
                continue
            spec = spec_at(n)
            pc = count_params(spec)
            if not cons.admits(pc.total, pc.active):
                continue
            shape = fg_shape(n, E, G)
            D = F / float(shape["flops_per_token"])
            loss = float(law.predict(float(shape["n_total"]), D, G))
            rec = _record(spec, law="fg", tokens=D, seq_len=cons.seq_len)
            rep = law.check_range(float(shape["n_total"]), D, G)
            rec.update(
                compute=F, flops_convention="fg", flops_per_token=float(shape["flops_per_token"]),
                flops_per_token_ling=flops_per_token(spec, seq_len=cons.seq_len),
                granularity_fg=float(G), predicted_loss=loss,
                law_params_total_non_embedding=float(shape["n_total"]),
                law_params_active_non_embedding=float(shape["n_active"]),
                in_fitted_range=rep.inside, range_warnings=list(rep.violations),
                note="loss and tokens use FG's shapes (non-gated FFN, 12 d^2 active per block); "
                "the buildable SwiGLU spec has 1.5x the FFN parameters",
            )
            out.append((loss, rec))
    out.sort(key=lambda t: t[0])
    return [rec for _, rec in out]


# ---------------------------------------------------------------------- joint
def _joint_spec(d: int, E: int, vocab: int) -> ModelSpec:
    n = d // 64
    if E == 1:
        return ModelSpec(d_model=d, n_layers=n, n_heads=n, head_dim=64, vocab_size=vocab,
                         d_ffn=3 * d)
    return ModelSpec(d_model=d, n_layers=n, n_heads=n, head_dim=64, vocab_size=vocab,
                     n_experts=E, top_k=1, d_expert=3 * d)


def _design_joint(cons: DesignConstraints, *, vocab: int) -> list:
    law = JointLaw.published()
    F = float(cons.compute)
    out = []
    for E in (1, 2, 4, 8, 16, 32):
        n_target, _ = law.compute_optimal(F, E)
        # d = 64·n_blocks with n_blocks = d/64: pick the two d bracketing N_act*.
        actives = {}
        d = 64
        while True:
            actives[d] = count_params(_joint_spec(d, E, vocab)).active
            if actives[d] >= n_target or d > 65536:
                break
            d += 64
        # the limits are part of the search: the loss rises as d leaves the optimum, so
        # when the bracketing d are refused the largest admissible d below them is best
        def admits(n: int, E: int = E) -> bool:
            return cons.admits(*_counts(_joint_spec(64 * n, E, vocab)))

        blocks = _largest_admissible(admits, d // 64)
        if blocks < 1:
            continue
        for dd in {max(64, min(d - 64, 64 * blocks)), min(d, 64 * blocks)}:
            spec = _joint_spec(dd, E, vocab)
            pc = count_params(spec)
            if not cons.admits(pc.total, pc.active):
                continue
            D = F / (6.0 * pc.active)
            loss = float(law.predict(pc.active, D, E))
            rec = _record(spec, law="joint", tokens=D, seq_len=cons.seq_len)
            rep = law.check_range(pc.active, D, E)
            rec.update(
                compute=F, flops_convention="6*N_act (embeddings included)",
                flops_per_token=6.0 * pc.active,
                flops_per_token_ling=flops_per_token(spec, seq_len=cons.seq_len),
                predicted_loss=loss, optimal_active_params=float(n_target),
                learning_rate_joint=law.learning_rate(pc.active_non_embedding, E),
                in_fitted_range=rep.inside, range_warnings=list(rep.violations),
            )
            out.append((loss, rec))
    out.sort(key=lambda t: t[0])
    return [rec for _, rec in out]


def design(
    compute: float,
    *,
    law: str = "ling2025",
    max_total_params: float | None = None,
    max_active_params: float | None = None,
    memory_gb: float | None = None,
    top: int = 5,
    seq_len: int = 4096,
    vocab_size: int | None = None,
    allow_extrapolation: bool = False,
) -> list[dict]:
    """Best ``top`` candidate architectures for ``compute`` under ``law`` (best first).

    Each candidate is a dict with at least ``experts``, ``top_k``, ``shared_experts``,
    ``d_model``, ``layers``, ``d_expert``, ``activation_ratio`` (E_a/E),
    ``granularity`` (2d/d_expert), ``granularity_fg`` (4d/d_expert; FG's G for ``fg``),
    ``total_params``, ``active_params`` (accounting, embeddings included), ``tokens``,
    ``learning_rate``, ``batch_tokens`` and ``predicted_el`` (ling2025) or
    ``predicted_loss`` (fg, joint), plus ``spec`` (the :class:`ModelSpec` fields).
    ``vocab_size`` defaults to Ling 2.0's 157,184 (ling2025, fg) or JOINT's 50,257.

    Examples
    --------
    >>> best = design(2.95e18, law="fg", top=1)[0]
    >>> best["granularity_fg"]
    8.0
    """
    if law not in DESIGN_LAWS:
        raise ConfigError(f"'law' must be one of {', '.join(DESIGN_LAWS)}; got {law!r}")
    check_range("top", top, low=1, integer=True)
    cons = DesignConstraints(compute=compute, max_total_params=max_total_params,
                             max_active_params=max_active_params, memory_gb=memory_gb,
                             seq_len=seq_len)
    if vocab_size is not None:
        check_range("vocab_size", vocab_size, low=1, integer=True)
    if law == "ling2025":
        out = _design_ling(cons, vocab=vocab_size or LING2_VOCAB,
                           allow_extrapolation=allow_extrapolation)
    elif law == "fg":
        out = _design_fg(cons, vocab=vocab_size or LING2_VOCAB)
    else:
        out = _design_joint(cons, vocab=vocab_size or JOINT_VOCAB)
    if not out and max_total_params is None and max_active_params is None \
            and memory_gb is None:
        raise ConfigError(
            f"'compute' {compute:g} is too small for law {law!r}: no architecture of its "
            "search grid (ling2025: d_model >= 256 with >= 2 layers) fits; raise the compute")
    if not out:
        raise ConfigError(
            f"no buildable architecture satisfies the constraints at compute {compute:g} "
            f"(max_total_params={max_total_params}, max_active_params={max_active_params}, "
            f"memory_gb={memory_gb}); relax a limit"
        )
    return out[:top]
