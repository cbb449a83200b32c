"""Expand a :class:`~moescale.sweep.config.SweepConfig` into concrete, keyed runs.

For every budget C (FLOPs, [EL] C = M·D with Ling M, arXiv 2507.17702) each family
(:mod:`moescale.sweep.families`) gives its members; ladder families give every
architecture configuration (dense, and each MoE configuration alike) an IsoFLOP ladder
of rungs centred on the [EL] Table 1 allocation law's M_opt(C), each trained on
``D = C/M`` tokens, with ``seeds`` replicates.

The plan is a pure function of the config and the results so far (:func:`plan_sweep`'s
``results``), so a sweep is driven by re-planning after each round of training
(:func:`moescale.sweep.execute.run_adaptive`):

1. **Learning-rate scan** (``[lr_scan]``): each configuration trains its centre rung at
   one budget with ×0.5/×1/×2 the [EL] Eq. 3 learning rate (the ``hparam`` grid); its
   ladders wait, then use the multiplier with the lowest loss (``lr_multiplier``).
2. **Adaptive extension**: when every rung of a ladder has finished, the planner asks
   :func:`moescale.fit.isoflop.extension_side` whether the minimum is bracketed (at least
   ``min_each_side`` rungs each side above the minimum by more than their paired standard
   error) and, if not, adds a rung on the open side, up to ``[ladder] max_extend`` per
   side. Each ladder ends ``bracketed`` or ``unbracketed`` (:class:`LadderStatus`).

Learning rate and batch default to [EL] Eq. 3 (:mod:`moescale.train.config`). Each run
is keyed by a hash of its resolved architecture and training config, so a re-plan
yields the same keys and an edited run gets a new one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moescale.errors import ConfigError
from moescale.fit.isoflop import extension_side, paired_se
from moescale.spec.accounting import count_params, flops_per_token
from moescale.spec.model_spec import ModelSpec
from moescale.sweep.config import SweepConfig
from moescale.sweep.families import Architecture, LadderFamily, Member, hparam_grid
from moescale.train.config import TrainConfig, el_lr_opt, resolve_plan
from moescale.train.identity import run_hash

__all__ = [
    "PlannedRun",
    "SweepPlan",
    "LadderStatus",
    "plan_sweep",
    "run_key",
    "budget_tag",
    "M_TOLERANCE",
]

M_TOLERANCE = 1e-9
"""Relative spread of M allowed among family members that share a backbone."""

_FINISHED = ("done", "failed")


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
    """The family kind (``dense``, ``activation``, …, ``lr_scan``)."""
    budget: float
    """The planned budget C this run belongs to (assigned here, once)."""
    spec: ModelSpec
    config: TrainConfig
    arch_config: str
    """Architecture-configuration key excluding size (``dense``, ``moe-E16-k2-s1-G2``)."""
    lr_multiplier: float = 1.0
    """Multiplier on the [EL] Eq. 3 learning rate."""
    seed: int = 0
    rung: int | None = None
    """Ladder rung index (d_model = rung·d_step); ``None`` outside ladders."""
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
            "name": self.name, "key": self.key, "family": self.family, "kind": self.kind,
            "budget": self.budget, "config": self.arch_config, "arch": "moe" if s.is_moe
            else "dense", "rung": self.rung, "seed": self.seed,
            "lr_multiplier": self.lr_multiplier, "d_model": s.d_model,
            "n_layers": s.n_layers, "n_heads": s.n_heads, "d_ffn": s.d_ffn,
            "n_experts": s.n_experts, "top_k": s.top_k, "n_shared_experts": s.n_shared_experts,
            "d_expert": s.d_expert, "activation_ratio": s.activation_ratio,
            "granularity": s.granularity, "shared_ratio": s.shared_ratio,
            "params_total": pc.total, "params_active": pc.active,
            "params_total_non_embedding": pc.non_embedding,
            "params_active_non_embedding": pc.active_non_embedding,
            "flops_per_token": self.flops_per_token, "tokens": self.tokens,
            "compute": self.compute, "n_steps": self.n_steps, "batch_tokens": self.batch_tokens,
            "learning_rate": self.learning_rate, "est_seconds": self.est_seconds,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, kw_only=True)
class LadderStatus:
    """Where one configuration's IsoFLOP ladder at one budget stands."""

    family: str
    config: str
    budget: float
    m: tuple[float, ...]
    """Ling M of its rungs (ascending)."""
    status: str
    """``pending`` (rungs still training), ``waiting`` (for the learning-rate scan),
    ``bracketed``, or ``unbracketed`` (extension bound reached, or too few results)."""
    open_side: str | None = None
    """Last :func:`~moescale.fit.isoflop.extension_side` answer (``None``: bracketed)."""
    extended: tuple[int, int] = (0, 0)
    """Rungs added below / above the base ladder."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """All runs of a sweep known now, in execution order (cheapest first)."""

    sweep: SweepConfig
    runs: tuple[PlannedRun, ...]
    throughput: float
    """Ling FLOPs/s used for the time estimates."""
    throughput_source: str = "assumed"
    notes: tuple[str, ...] = field(default_factory=tuple)
    ladders: tuple[LadderStatus, ...] = ()
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    """Configuration → learning-rate multiplier chosen by the scan."""

    @property
    def total_compute(self) -> float:
        return float(sum(r.compute for r in self.runs))

    @property
    def est_seconds(self) -> float:
        return float(sum(r.est_seconds for r in self.runs))

    @property
    def settled(self) -> bool:
        """True when no ladder is pending or waiting (nothing more will be added)."""
        return all(s.status in ("bracketed", "unbracketed") for s in self.ladders)

    def to_dict(self) -> dict[str, Any]:
        """The ``moescale sweep plan --json`` object."""
        return {
            "sweep": self.sweep.name, "n_runs": len(self.runs),
            "budgets": list(self.sweep.budgets), "seq_len": self.sweep.seq_len,
            "flops_convention": "ling", "total_compute": self.total_compute,
            "throughput": self.throughput, "throughput_source": self.throughput_source,
            "est_seconds": self.est_seconds, "notes": list(self.notes),
            "ladders": [s.to_dict() for s in self.ladders],
            "lr_multipliers": dict(self.lr_multipliers),
            "resources": self.sweep.resources.to_dict(),
            "runs": [r.row() for r in self.runs],
        }


# ---------------------------------------------------------------------------- planning
class _Planner:
    """Builds the runs of one :func:`plan_sweep` call (results → next runs)."""

    def __init__(self, sw: SweepConfig, results: Mapping[str, Mapping[str, Any]],
                 throughput: float) -> None:
        self.sw, self.results, self.throughput = sw, results, throughput
        self.runs: list[PlannedRun] = []
        self.ladders: list[LadderStatus] = []
        self.notes: list[str] = []
        self.lr: dict[str, float | None] = {}

    def make(self, member: Member, *, family: str, kind: str, budget: float, seed: int,
             name: str) -> PlannedRun:
        sw = self.sw
        overrides = dict(member.overrides)
        if member.lr_multiplier != 1.0 and "learning_rate" not in overrides:
            overrides["learning_rate"] = el_lr_opt(budget) * member.lr_multiplier
        spec = member.spec.replace(name=name)
        cfg = TrainConfig.from_dict({
            **sw.train, **overrides, "compute": budget, "seq_len": sw.seq_len, "seed": seed,
            "tokenizer": sw.tokenizer, "corpus": sw.corpus,
            "extra": {"sweep": sw.name, "run": name, "family": family,
                      "tags": list(member.tags)},
        })
        plan = resolve_plan(spec, cfg)
        m = plan.flops_per_token
        if budget < plan.batch_tokens * m:
            raise ConfigError(
                f"budget {budget:.3g} FLOPs is infeasible for run {name!r}: smaller than one "
                f"batch ({plan.batch_tokens} tokens × M {m:.3g} = {plan.batch_tokens * m:.3g} "
                "FLOPs); raise the budget or lower [train] batch_tokens / seq_len")
        return PlannedRun(
            name=name, key=run_key(spec, cfg), family=family, kind=kind, budget=budget,
            spec=spec, config=cfg, arch_config=member.config,
            lr_multiplier=member.lr_multiplier, seed=seed, rung=member.rung,
            flops_per_token=m, tokens=plan.tokens, compute=plan.flops, n_steps=plan.n_steps,
            batch_tokens=plan.batch_tokens, learning_rate=plan.learning_rate,
            est_seconds=plan.flops / self.throughput, tags=member.tags)

    def replicate(self, member: Member, *, family: str, kind: str, budget: float,
                  n_seeds: int, prefix: str) -> list[PlannedRun]:
        """``n_seeds`` replicates of ``member`` (seed suffix on all but the base seed)."""
        out = []
        for seed in range(self.sw.seed, self.sw.seed + n_seeds):
            name = "-".join(p for p in (prefix, budget_tag(budget), member.label) if p)
            if member.lr_multiplier != 1.0 and "lr=" not in ";".join(member.tags):
                name += f"-lr{member.lr_multiplier:g}"
            if seed != self.sw.seed:
                name += f"-seed{seed}"
            out.append(self.make(member, family=family, kind=kind, budget=budget, seed=seed,
                                 name=name))
        return out

    def finished(self, runs: list[PlannedRun]) -> bool:
        return all(self.results.get(r.key, {}).get("status") in _FINISHED for r in runs)

    def loss(self, run: PlannedRun) -> tuple[float, float] | None:
        res = self.results.get(run.key, {})
        loss = res.get("loss")
        if res.get("status") != "done" or not isinstance(loss, (int, float)) \
                or not math.isfinite(loss):
            return None
        se = res.get("loss_se")
        return float(loss), float(se) if isinstance(se, (int, float)) and se >= 0 else math.nan

    def ladder_points(self, by_rung: list[list[PlannedRun]]) -> list[tuple[float, float, float]]:
        """``(M, loss, loss_se)`` of every finished run of a ladder.

        Every run of a ladder is evaluated on the same validation blocks, so a rung's
        loss difference from the best rung is known far better than either loss
        (:func:`~moescale.fit.isoflop.paired_se`, which the report's fit uses too). When
        every run has its block losses, each run's SE is the paired SE of its rung's
        difference from the best rung (0 for the best rung;
        ``extension_side`` then compares √(SE_i² + 0) with the difference); otherwise the
        runs' own ``val_loss_se``.
        """
        rows = [(r, ls) for rr in by_rung for r in rr if (ls := self.loss(r)) is not None]
        blocks = [self.results[r.key].get("blocks") for r, _ in rows]
        points = [(r.flops_per_token, ls[0], ls[1]) for r, ls in rows]
        if rows and all(isinstance(b, list) and len(b) == len(blocks[0]) > 1 for b in blocks):
            se = paired_se([p[0] for p in points], [p[1] for p in points], blocks)
            points = [(m, loss, s) for (m, loss, _), s in zip(points, se, strict=True)]
        return points

    # ------------------------------------------------------------------ lr scan
    def lr_scan(self) -> None:
        scan = self.sw.lr_scan
        if scan is None:
            return
        for fam in self.sw.ladder_families:
            for arch in fam.architectures(self.sw):
                base = _centre_member(fam, arch, scan.budget, self.sw)
                if base.config in self.lr:
                    continue
                self.lr[base.config] = self._scan(fam, base, scan)

    def _scan(self, fam: LadderFamily, base: Member, scan: Any) -> float | None:
        """One configuration's scan: its multiplier, or ``None`` while runs are pending
        (or all failed). While the best loss sits at an end of the grid, one more
        multiplier is added beyond that end (up to ``scan.max_extend`` per side), so the
        pick is bracketed by a worse multiplier on each side or flagged in the notes."""
        mults = list(scan.lr_multipliers)
        added = {"low": 0, "high": 0}
        while True:
            grid = hparam_grid(base, scan.budget, self.sw, tuple(mults),
                               tags=("hparam", "lr_scan", base.config))
            runs = [self.make(m, family="lr_scan", kind="lr_scan", budget=scan.budget,
                              seed=self.sw.seed,
                              name=f"lr_scan-{fam.name}-{budget_tag(scan.budget)}-{m.label}")
                    for m in grid]
            listed = {r.key for r in self.runs}
            self.runs += [r for r in runs if r.key not in listed]
            if not self.finished(runs):
                return None
            losses = {m.lr_multiplier: self.loss(r) for m, r in zip(grid, runs, strict=True)}
            done = {k: v[0] for k, v in losses.items() if v is not None}
            if not done:
                self.notes.append(f"every learning-rate scan run of {base.config} failed: "
                                  "its ladders are not planned (see the failures)")
                return None
            best = min(done, key=lambda k: (done[k], abs(math.log(k))))
            end = "low" if best == mults[0] else "high" if best == mults[-1] else None
            if end is None:
                return best
            if added[end] >= scan.max_extend:
                self.notes.append(
                    f"learning-rate scan of {base.config}: the best multiplier ×{best:g} is "
                    f"at the {end} end of the scanned grid ({', '.join(f'×{m:g}' for m in mults)}"
                    f"), not bracketed; its ladders use it")
                return best
            added[end] += 1
            if end == "low":
                mults.insert(0, mults[0] * mults[0] / mults[1])
            else:
                mults.append(mults[-1] * mults[-1] / mults[-2])

    # ------------------------------------------------------------------ ladders
    def ladder(self, fam: LadderFamily, arch: Architecture, budget: float) -> None:
        lad, sw = self.sw.ladder, self.sw
        members = fam.ladder_members(arch, budget, sw)
        config = members[0].config
        mult = self.lr.get(config, 1.0) if sw.lr_scan is not None else 1.0
        if mult is None:
            self.ladders.append(LadderStatus(family=fam.name, config=config, budget=budget,
                                             m=(), status="waiting"))
            return
        lower = higher = 0
        side: str | None = None
        while True:
            members = [dataclasses.replace(m, lr_multiplier=mult) for m in
                       fam.ladder_members(arch, budget, sw, lower, higher)]
            by_rung = [self.replicate(m, family=fam.name, kind=fam.kind, budget=budget,
                                      n_seeds=fam.n_seeds(sw), prefix=fam.name)
                       for m in members]
            ms = tuple(rr[0].flops_per_token for rr in by_rung)
            status = LadderStatus(family=fam.name, config=config, budget=budget, m=ms,
                                  status="pending", extended=(lower, higher))
            if not self.finished([r for rr in by_rung for r in rr]):
                break
            done = self.ladder_points(by_rung)
            if len({m for m, _, _ in done}) < 3:
                status = dataclasses.replace(status, status="unbracketed", open_side="both")
                break
            # replicates (equal M) are grouped by extension_side: mean loss, its SE
            side = extension_side([p[0] for p in done], [p[1] for p in done],
                                  [p[2] for p in done], min_each_side=lad.min_each_side)
            status = dataclasses.replace(status, open_side=side)
            if side is None:
                status = dataclasses.replace(status, status="bracketed")
                break
            lo = lower + (side in ("lower", "both") and lower < lad.max_extend)
            hi = higher + (side in ("higher", "both") and higher < lad.max_extend)
            grown = len(fam.rung_shapes(arch, budget, sw, lo, hi)) > len(members)
            if not grown:
                status = dataclasses.replace(status, status="unbracketed")
                break
            lower, higher = lo, hi
        self.runs += [r for rr in by_rung for r in rr]
        self.ladders.append(status)

    def fixed(self, fam: Any, budget: float) -> None:
        members = fam.members(budget, self.sw)
        runs = [r for m in members for r in
                self.replicate(m, family=fam.name, kind=fam.kind, budget=budget,
                               n_seeds=fam.n_seeds(self.sw), prefix=fam.name)]
        ms = [r.flops_per_token for r in runs]
        if fam.kind != "equal_resource" and max(ms) > min(ms) * (1 + M_TOLERANCE):
            raise ConfigError(f"family {fam.name!r} at {budget_tag(budget)}: members do not "
                              f"share M ({min(ms):.4g}..{max(ms):.4g})")
        self.runs += runs


def _centre_member(fam: LadderFamily, arch: Architecture, budget: float,
                   sw: SweepConfig) -> Member:
    """The rung nearest the ladder centre (the learning-rate scan's model)."""
    members = fam.ladder_members(arch, budget, sw)
    target = math.log(fam.centre(budget))
    return min(members, key=lambda m: abs(math.log(flops_per_token(m.spec, seq_len=sw.seq_len))
                                          - target))


def plan_sweep(sw: SweepConfig, *, results: Mapping[str, Mapping[str, Any]] | None = None,
               throughput: float | None = None,
               throughput_source: str | None = None) -> SweepPlan:
    """Expand a sweep config into the runs known now (cheapest first).

    Parameters
    ----------
    sw : SweepConfig
    results : mapping, optional
        Run key → ``{"status", "loss", "loss_se"}`` of runs trained so far
        (:meth:`moescale.sweep.store.RunStore.results`). Without it the plan holds the
        first round: the learning-rate scan (if any) and the base ladder rungs.
    throughput : float, optional
        Ling FLOPs/s for the time estimates; default ``sw.throughput`` (assumed).

    Raises
    ------
    ConfigError
        Duplicate run names, an infeasible budget, or a single-size family whose members
        do not share M. Runs of different families that resolve to the same key are kept
        under both names, noted in ``notes`` and trained once.

    Examples
    --------
    >>> from moescale.sweep.config import parse_sweep_config
    >>> sw = parse_sweep_config({"sweep": {"name": "x", "budgets": [1e12]},
    ...                          "dense": {"rungs": 3}})
    >>> [r.name for r in plan_sweep(sw).runs]
    ['dense-1e12-d32L1', 'dense-1e12-d64L2', 'dense-1e12-d96L3']
    """
    tp = float(throughput if throughput is not None else sw.throughput)
    p = _Planner(sw, results or {}, tp)
    p.lr_scan()
    for c in sw.budgets:
        for fam in sw.families:
            if fam.budgets is not None and c not in fam.budgets:
                continue
            if isinstance(fam, LadderFamily) and fam.ladder:
                for arch in fam.architectures(sw):
                    p.ladder(fam, arch, c)
            else:
                p.fixed(fam, c)
    names: dict[str, str] = {}
    keys: dict[str, str] = {}
    runs: list[PlannedRun] = []
    for r in p.runs:
        if r.name in names:
            if names[r.name] == r.key:
                continue
            raise ConfigError(f"duplicate run name {r.name!r} in sweep {sw.name!r}")
        names[r.name] = r.key
        runs.append(r)
        if r.key in keys:
            p.notes.append(f"{r.name} is the same run as {keys[r.key]} (key {r.key}): "
                           "trained once")
        else:
            keys[r.key] = r.name
    waiting = sorted({s.config for s in p.ladders if s.status == "waiting"})
    if waiting:
        p.notes.append(f"ladders of {', '.join(waiting)} wait for the learning-rate scan")
    runs.sort(key=lambda r: (r.compute, r.name))
    lr = {k: v for k, v in p.lr.items() if v is not None}
    return SweepPlan(sweep=sw, runs=tuple(runs), throughput=tp,
                     throughput_source=throughput_source or "assumed", notes=tuple(p.notes),
                     ladders=tuple(p.ladders), lr_multipliers=lr)
