"""Expand a :class:`~moescale.sweep.spec.SweepSpec` into concrete, keyed runs.

For every budget C (FLOPs, [EL] C = M·D with Ling M, arXiv 2507.17702):

- ``[dense]``: an IsoFLOP ladder ``M = m·M_opt^dense(C)``, M_opt the dense row of
  [EL] Table 1 (:class:`moescale.laws.AllocationLaw`), each trained on ``D = C/M`` tokens.
- ``activation``: E_a (top_k), E_s and G fixed, E grows ([EL] Table 7): A = E_a/E falls
  while M is unchanged.
- ``granularity``: E = c·G, E_a = G, E_s = s·G, d_expert = 2d/G ([EL] Table 8 with
  c = 32, s = 1/2): active FFN width ``(E_a+E_s)·d_expert = (1+s)·2d`` is the same for
  every G, so M is too.
- ``shared``: E_a + E_s fixed, S = E_s/(E_a+E_s) varies.
- ``equal_resource`` ([EQ], arXiv 2506.12119): MoE members with the dense
  compute-optimal model's backbone and total parameters (E·d_expert ≈ d_ffn) and the
  same compute, across parameter activation rates r_a = N_a/N.
- ``hparam``: a learning-rate × batch grid around [EL] Eq. 3 at each budget.

Every member of a family at one budget has the same backbone and active FFN width,
hence the same M (checked to 1e-9 relative). Learning rate and batch default to
[EL] Eq. 3 (:mod:`moescale.train.config`). Each run is keyed by a hash of its
resolved architecture and training config, so a re-plan of the same spec yields the
same keys and an edited run gets a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moescale.errors import ConfigError
from moescale.laws.hparams import AllocationLaw
from moescale.spec.accounting import count_params
from moescale.spec.model_spec import ModelSpec
from moescale.sweep.shapes import dense_shape, moe_backbone
from moescale.sweep.spec import FamilySpec, SweepSpec
from moescale.train.config import TrainConfig, el_batch_opt, el_lr_opt, resolve_plan
from moescale.train.identity import run_hash

__all__ = [
    "PlannedRun",
    "SweepPlan",
    "plan_sweep",
    "run_key",
    "dense_m_opt",
    "moe_m_opt",
    "budget_tag",
    "M_TOLERANCE",
]

M_TOLERANCE = 1e-9
"""Relative spread of M allowed inside one family at one budget (members share M exactly)."""


def dense_m_opt(compute: float) -> float:
    """[EL] Table 1 dense compute-optimal M (Ling FLOPs/token), from :mod:`moescale.laws`."""
    return float(AllocationLaw.published("dense").flops_per_token(compute))


def moe_m_opt(compute: float) -> float:
    """[EL] Table 1 MoE compute-optimal M (Ling FLOPs/token), from :mod:`moescale.laws`."""
    return float(AllocationLaw.published("moe").flops_per_token(compute))


def budget_tag(compute: float) -> str:
    """Short budget label used in run names: ``1e12``, ``3e12``, ``3.16e12``."""
    return f"{compute:.3g}".replace("e+", "e")


def run_key(spec: ModelSpec, config: TrainConfig) -> str:
    """The sweep store's key of a run: :func:`moescale.train.run_hash` (one definition of
    run identity, shared with the trainer; fields at their defaults are left out)."""
    return run_hash(spec, config)


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One concrete run of a sweep."""

    name: str
    key: str
    family: str
    kind: str
    """``dense`` or the family kind."""
    budget: float
    spec: ModelSpec
    config: TrainConfig
    flops_per_token: float
    """Ling M at the sweep's seq_len."""
    tokens: int
    compute: float
    """Planned compute M·D after rounding to whole steps."""
    n_steps: int
    batch_tokens: int
    learning_rate: float
    est_seconds: float
    tags: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        """The plan-table row (``moescale sweep plan --json`` entry)."""
        pc = count_params(self.spec)
        s = self.spec
        return {
            "name": self.name,
            "key": self.key,
            "family": self.family,
            "kind": self.kind,
            "budget": self.budget,
            "arch": "moe" if s.is_moe else "dense",
            "d_model": s.d_model,
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_ffn": s.d_ffn,
            "n_experts": s.n_experts,
            "top_k": s.top_k,
            "n_shared_experts": s.n_shared_experts,
            "d_expert": s.d_expert,
            "activation_ratio": s.activation_ratio,
            "granularity": s.granularity,
            "shared_ratio": s.shared_ratio,
            "params_total": pc.total,
            "params_active": pc.active,
            "params_total_non_embedding": pc.non_embedding,
            "params_active_non_embedding": pc.active_non_embedding,
            "flops_per_token": self.flops_per_token,
            "tokens": self.tokens,
            "compute": self.compute,
            "n_steps": self.n_steps,
            "batch_tokens": self.batch_tokens,
            "learning_rate": self.learning_rate,
            "est_seconds": self.est_seconds,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """All runs of a sweep, in execution order (cheapest first)."""

    spec: SweepSpec
    runs: tuple[PlannedRun, ...]
    throughput: float
    """Ling FLOPs/s used for the time estimates."""
    throughput_source: str = "assumed"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_compute(self) -> float:
        return float(sum(r.compute for r in self.runs))

    @property
    def est_seconds(self) -> float:
        return float(sum(r.est_seconds for r in self.runs))

    def to_dict(self) -> dict[str, Any]:
        """The ``moescale sweep plan --json`` object."""
        return {
            "sweep": self.spec.name,
            "n_runs": len(self.runs),
            "budgets": list(self.spec.budgets),
            "seq_len": self.spec.seq_len,
            "flops_convention": "ling",
            "total_compute": self.total_compute,
            "throughput": self.throughput,
            "throughput_source": self.throughput_source,
            "est_seconds": self.est_seconds,
            "notes": list(self.notes),
            "resources": self.spec.resources.to_dict(),
            "runs": [r.row() for r in self.runs],
        }


# ---------------------------------------------------------------------------- members
def _moe(bb, *, vocab: int, E: int, k: int, Es: int, d_expert: int, n_dense: int,
         name: str) -> ModelSpec:
    return ModelSpec(
        name=name, d_model=bb.d_model, n_layers=bb.n_layers, n_heads=bb.n_heads,
        n_kv_heads=bb.n_kv_heads, vocab_size=vocab,
        d_ffn=(k + Es) * d_expert if n_dense else 0,
        n_experts=E, top_k=k, n_shared_experts=Es, d_expert=d_expert, n_dense_layers=n_dense,
    )


def _check_g(fam: FamilySpec, d: int, g: float) -> int:
    d_expert = 2 * d / g
    if not float(d_expert).is_integer():
        raise ConfigError(f"family {fam.name!r}: d_expert = 2·d_model/G = 2·{d}/{g:g} is not an "
                          "integer; pick a granularity dividing 2·d_model")
    return int(d_expert)


def _family_members(fam: FamilySpec, c: float, sw: SweepSpec) -> list[tuple[str, ModelSpec,
                                                                            dict[str, Any]]]:
    """(member label, spec, train overrides) for one family at budget c."""
    target = (moe_m_opt(c) if fam.m_target == "moe" else dense_m_opt(c)) * fam.m_scale
    kw = {"seq_len": sw.seq_len, "vocab_size": sw.vocab_size, "grid": sw.shape}
    nd = fam.n_dense_layers
    out: list[tuple[str, ModelSpec, dict[str, Any]]] = []
    if fam.kind == "activation" or (fam.kind == "hparam" and fam.arch == "moe"):
        g = fam.granularity
        per_d = (fam.top_k + fam.n_shared_experts) * 2 / g
        div = int(g) if float(g).is_integer() else 1
        bb = moe_backbone(target, active_ffn_per_d=per_d, divisor=div, min_layers=nd + 1, **kw)
        de = _check_g(fam, bb.d_model, g)
        experts = fam.n_experts if fam.kind == "activation" else fam.n_experts[:1]
        specs = [(f"E{E}", _moe(bb, vocab=sw.vocab_size, E=E, k=fam.top_k,
                                Es=fam.n_shared_experts, d_expert=de, n_dense=nd, name=""))
                 for E in experts]
        if fam.kind == "activation":
            return [(lab, s, {}) for lab, s in specs]
        base = specs[0][1]
    elif fam.kind == "hparam":
        base = dense_shape(target, **kw)
    elif fam.kind == "granularity":
        per_d = (1 + fam.shared_per_g) * 2
        div = math.lcm(*fam.granularities)
        bb = moe_backbone(target, active_ffn_per_d=per_d, divisor=div, min_layers=nd + 1, **kw)
        for g in fam.granularities:
            de = _check_g(fam, bb.d_model, g)
            out.append((f"G{g}", _moe(bb, vocab=sw.vocab_size, E=fam.experts_per_g * g, k=g,
                                      Es=int(fam.shared_per_g * g), d_expert=de, n_dense=nd,
                                      name=""), {}))
        return out
    elif fam.kind == "shared":
        g = fam.granularity
        div = int(g) if float(g).is_integer() else 1
        bb = moe_backbone(target, active_ffn_per_d=fam.n_active * 2 / g, divisor=div,
                          min_layers=nd + 1, **kw)
        de = _check_g(fam, bb.d_model, g)
        E = max(fam.n_experts)
        for es in fam.n_shared:
            k = fam.n_active - es
            if k > E:
                raise ConfigError(f"family {fam.name!r}: E_a = {k} exceeds E = {E}; raise "
                                  "n_experts")
            out.append((f"S{es}", _moe(bb, vocab=sw.vocab_size, E=E, k=k, Es=es, d_expert=de,
                                       n_dense=nd, name=""), {}))
        return out
    elif fam.kind == "equal_resource":
        dense = dense_shape(dense_m_opt(c) * fam.m_scale, **kw)
        return [(f"r{r:g}", _equal_resource_member(dense, r, fam), {})
                for r in fam.activation_rates]
    else:  # pragma: no cover - kinds are validated when parsed
        raise ConfigError(f"unknown family kind {fam.kind!r}")
    # hparam grid around [EL] Eq. 3
    lr0, b0 = el_lr_opt(c), el_batch_opt(c)
    for lm in fam.lr_multipliers:
        for bm in fam.batch_multipliers:
            batch = max(sw.seq_len, int(round(b0 * bm / sw.seq_len)) * sw.seq_len)
            out.append((f"lr{lm:g}-b{bm:g}", base,
                        {"learning_rate": lr0 * lm, "batch_tokens": batch}))
    return out


def _equal_resource_member(dense: ModelSpec, rate: float, fam: FamilySpec) -> ModelSpec:
    """MoE with the dense model's backbone and (≈) total parameters whose parameter
    activation rate N_a/N (non-embedding) is closest to ``rate`` ([EQ])."""
    n_dense = count_params(dense).non_embedding
    best: tuple[float, ModelSpec] | None = None
    for E in sorted({2, 4, 8, 16, 32, 64, *fam.n_experts}):
        de = int(round(dense.d_ffn / E))
        if de < 8:
            continue
        for k in range(1, E):
            s = dense.replace(d_ffn=0, n_experts=E, top_k=k, d_expert=de, d_shared=None)
            pc = count_params(s)
            if abs(pc.non_embedding / n_dense - 1) > 0.05:
                continue
            err = abs(pc.active_non_embedding / pc.non_embedding - rate)
            if best is None or err < best[0] - 1e-12:
                best = (err, s)
    if best is None:
        raise ConfigError(f"family {fam.name!r}: no MoE matches the dense model's total params "
                          f"(d_ffn={dense.d_ffn}) within 5% with d_expert >= 8")
    if best[0] > 0.05:
        pc = count_params(best[1])
        raise ConfigError(
            f"family {fam.name!r}: activation rate {rate:g} is unreachable with the dense "
            f"backbone (d_model={dense.d_model}, d_ffn={dense.d_ffn}); closest r_a = "
            f"{pc.active_non_embedding / pc.non_embedding:.3f}. Attention parameters set a floor "
            "on N_a/N at small scale: raise m_scale or pick rates in reach"
        )
    return best[1]


# ---------------------------------------------------------------------------- planning
def _make_run(sw: SweepSpec, *, name: str, family: str, kind: str, budget: float,
              spec: ModelSpec, overrides: dict[str, Any], throughput: float,
              tags: tuple[str, ...]) -> PlannedRun:
    spec = spec.replace(name=name)
    cfg = TrainConfig.from_dict({
        **sw.train, **overrides, "compute": budget, "seq_len": sw.seq_len, "seed": sw.seed,
        "tokenizer": sw.tokenizer, "corpus": sw.corpus,
        "extra": {"sweep": sw.name, "run": name, "family": family, "tags": list(tags)},
    })
    plan = resolve_plan(spec, cfg)
    m = plan.flops_per_token
    if budget < plan.batch_tokens * m:
        raise ConfigError(
            f"budget {budget:.3g} FLOPs is infeasible for run {name!r}: smaller than one batch "
            f"({plan.batch_tokens} tokens × M {m:.3g} = {plan.batch_tokens * m:.3g} FLOPs); "
            "raise the budget or lower [train] batch_tokens / seq_len"
        )
    return PlannedRun(
        name=name, key=run_key(spec, cfg), family=family, kind=kind, budget=budget, spec=spec,
        config=cfg, flops_per_token=m, tokens=plan.tokens, compute=plan.flops,
        n_steps=plan.n_steps, batch_tokens=plan.batch_tokens,
        learning_rate=plan.learning_rate, est_seconds=plan.flops / throughput, tags=tags,
    )


def plan_sweep(sw: SweepSpec, *, throughput: float | None = None,
               throughput_source: str | None = None) -> SweepPlan:
    """Expand a sweep spec into its runs (cheapest first).

    Parameters
    ----------
    sw : SweepSpec
    throughput : float, optional
        Ling FLOPs/s for the time estimates; default ``sw.throughput`` (assumed).

    Raises
    ------
    ConfigError
        Duplicate run names, an infeasible budget, or a family whose members do not
        share M. Runs of different families that resolve to the same key (e.g. the G = 2
        member of a granularity family and an activation member) are kept under both
        names, noted in ``notes`` and trained once.

    Examples
    --------
    >>> from moescale.sweep.spec import parse_sweep_spec
    >>> sw = parse_sweep_spec({"sweep": {"name": "x", "budgets": [1e12]}, "dense": {}})
    >>> [r.name for r in plan_sweep(sw).runs]
    ['dense-1e12-m0.5', 'dense-1e12-m1', 'dense-1e12-m2']
    """
    tp = float(throughput if throughput is not None else sw.throughput)
    runs: list[PlannedRun] = []
    common = {"throughput": tp}
    for c in sw.budgets:
        tag = budget_tag(c)
        if sw.dense is not None and (sw.dense.budgets is None or c in sw.dense.budgets):
            for m in sw.dense.sizes:
                spec = dense_shape(dense_m_opt(c) * m, seq_len=sw.seq_len,
                                   vocab_size=sw.vocab_size, grid=sw.shape)
                runs.append(_make_run(sw, name=f"dense-{tag}-m{m:g}", family="dense",
                                      kind="dense", budget=c, spec=spec, overrides={},
                                      tags=("dense", f"ladder={m:g}"), **common))
        for fam in sw.families:
            if fam.budgets is not None and c not in fam.budgets:
                continue
            members = _family_members(fam, c, sw)
            fam_runs = [
                _make_run(sw, name=f"{fam.name}-{tag}-{label}", family=fam.name, kind=fam.kind,
                          budget=c, spec=spec, overrides=ov,
                          tags=(fam.kind, label), **common)
                for label, spec, ov in members
            ]
            ms = [r.flops_per_token for r in fam_runs]
            if fam.kind != "equal_resource" and max(ms) > min(ms) * (1 + M_TOLERANCE):
                raise ConfigError(f"family {fam.name!r} at {tag}: members do not share M "
                                  f"({min(ms):.4g}..{max(ms):.4g})")
            runs.extend(fam_runs)
    names: set[str] = set()
    keys: dict[str, str] = {}
    notes: list[str] = []
    for r in runs:
        if r.name in names:
            raise ConfigError(f"duplicate run name {r.name!r} in sweep {sw.name!r}")
        names.add(r.name)
        if r.key in keys:
            notes.append(f"{r.name} is the same run as {keys[r.key]} (key {r.key}): trained once")
        else:
            keys[r.key] = r.name
    runs.sort(key=lambda r: (r.compute, r.name))
    return SweepPlan(spec=sw, runs=tuple(runs), throughput=tp,
                     throughput_source=throughput_source or "assumed", notes=tuple(notes))
