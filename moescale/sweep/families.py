"""Sweep families as types: one class per family kind, each with ``members(budget, sweep)``.

A sweep config's ``[dense]`` table and every ``[[family]]`` table name a family kind;
:data:`FAMILIES` maps the kind to its class, whose :meth:`Family.from_table` validates
the table (every key typed and range-checked; an unknown key is a
:class:`~moescale.errors.ConfigError` naming it and the allowed keys).

Conventions (LAWS.md §1–3, [EL] arXiv 2507.17702): A = E_a/E (routed only),
G = 2·d_model/d_expert, S = E_s/(E_a+E_s); M is Ling's non-embedding training FLOPs per
token at the sweep's ``seq_len``; C = M·D.

Ladder families (``dense``, ``activation``, ``granularity``, ``shared``) give each of
their architecture configurations an IsoFLOP ladder at every budget: rungs of one
smooth shape family (:func:`~moescale.sweep.shapes.rung_backbone`) centred on the [EL]
Table 1 compute-optimal M of :class:`~moescale.laws.AllocationLaw` (``m_target``), which
the planner extends on the open side until the loss minimum is bracketed. With
``ladder = false`` a family trains one searched size per budget instead (members share M).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from moescale.errors import ConfigError, check_range
from moescale.spec.accounting import count_params, flops_per_token
from moescale.spec.model_spec import ModelSpec
from moescale.sweep.shapes import dense_shape, moe_backbone, rung_backbone

__all__ = [
    "Member",
    "Architecture",
    "Family",
    "LadderFamily",
    "DenseLadder",
    "ActivationFamily",
    "GranularityFamily",
    "SharedFamily",
    "EqualResourceFamily",
    "HparamFamily",
    "FAMILIES",
    "FAMILY_KINDS",
    "register_family",
    "config_key",
    "hparam_grid",
]


@dataclass(frozen=True, kw_only=True)
class Member:
    """One member of a family at one budget (before seeds and training config)."""

    label: str
    """Unique within the family and budget; part of the run name."""
    spec: ModelSpec
    config: str
    """Architecture-configuration key excluding size (:func:`config_key`)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig fields this member sets (e.g. the hparam grid's learning rate)."""
    lr_multiplier: float = 1.0
    """Multiplier on the [EL] Eq. 3 learning rate."""
    rung: int | None = None
    """Ladder rung index k (d_model = k·d_step); ``None`` outside ladders."""
    tags: tuple[str, ...] = ()


def config_key(spec: ModelSpec) -> str:
    """Architecture-configuration key without size: ``dense`` or ``moe-E16-k2-s1-G2``
    (E routed experts, k = E_a, s = E_s, G = 2·d_model/d_expert; ``-nd1`` for one leading
    dense layer).

    >>> config_key(ModelSpec(d_model=32, n_layers=2, n_heads=2, vocab_size=257,
    ...                      n_experts=16, top_k=2, n_shared_experts=1, d_expert=32))
    'moe-E16-k2-s1-G2'
    """
    if not spec.is_moe:
        return "dense"
    key = f"moe-E{spec.n_experts}-k{spec.top_k}-s{spec.n_shared_experts}-G{spec.granularity:g}"
    return key + (f"-nd{spec.n_dense_layers}" if spec.n_dense_layers else "")


@dataclass(frozen=True)
class Architecture:
    """One architecture configuration of a family: builds its spec from a backbone."""

    label: str
    build: Callable[[int, int, Any], ModelSpec]
    """``(d_model, n_layers, sweep) -> ModelSpec``."""
    active_ffn_per_d: float
    """Active FFN width per layer / d_model (for the single-size backbone search)."""
    divisor: int = 1
    """Must divide 2·d_model (so every d_expert = 2d/G is an integer)."""
    min_layers: int = 1
    tags: tuple[str, ...] = ()

    def valid(self, d: int, n_layers: int) -> bool:
        return (2 * d) % self.divisor == 0 and n_layers >= self.min_layers


# ---------------------------------------------------------------------------- table parsing
def _opt(default: Any, *, low: float | None = None, low_inclusive: bool = True,
         high: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A family field with its validation range (read by :meth:`Family.from_table`)."""
    meta = {"low": low, "low_inclusive": low_inclusive, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


def _num_list(value: Any, name: str, *, integer: bool = False, low: float | None = None,
              low_inclusive: bool = False, high: float | None = None) -> tuple:
    """A non-empty, duplicate-free list of numbers in range (a scalar is a 1-list)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name!r} must be a non-empty list of numbers; got {value!r}")
    for i, v in enumerate(value):
        check_range(f"{name}[{i}]", v, low=low, low_inclusive=low_inclusive, high=high,
                    integer=integer)
    if len(set(value)) != len(value):
        raise ConfigError(f"{name!r} has duplicate entries; got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def _coerce(hint: Any, value: Any, name: str, meta: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name, meta)
    lo, lo_inc, hi = meta.get("low"), meta.get("low_inclusive", True), meta.get("high")
    if origin is tuple:
        return _num_list(value, name, integer=args[0] is int, low=lo, low_inclusive=lo_inc,
                         high=hi)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name!r} must be true or false; got {value!r}")
        return value
    if hint in (int, float):
        check_range(name, value, low=lo, low_inclusive=lo_inc, high=hi, integer=hint is int)
        return hint(value)
    choices = meta.get("choices")
    if not isinstance(value, str) or (choices and value not in choices):
        allowed = f"one of {', '.join(choices)}" if choices else "a string"
        raise ConfigError(f"{name!r} must be {allowed}; got {value!r}")
    return value


FAMILIES: dict[str, type[Family]] = {}
"""Family kind → class (the registry :meth:`Family.from_table` dispatches on)."""


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family kind to :data:`FAMILIES`."""
    FAMILIES[cls.kind] = cls
    return cls


@dataclass(frozen=True, kw_only=True)
class Family:
    """Base of every family kind: a name, an optional budget subset and replicate count."""

    kind: ClassVar[str] = ""
    name: str
    budgets: tuple[float, ...] | None = None
    """Subset of the sweep budgets (``None``: all)."""
    seeds: int | None = None
    """Replicates per member (``None``: the sweep's ``seeds``); seeds are sweep.seed + i."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, where: str,
                   budgets: tuple[float, ...]) -> Family:
        """Validate one TOML table into this family kind (see module docstring)."""
        table = dict(table)
        kind = table.pop("kind", cls.kind)
        if kind not in FAMILIES:
            raise ConfigError(f"'kind' in {where} must be one of {', '.join(FAMILY_KINDS)}; "
                              f"got {kind!r}")
        klass = FAMILIES[kind]
        if klass is not cls and cls is not Family:
            raise ConfigError(f"{where} has kind {kind!r}; expected {cls.kind!r}")
        hints = typing.get_type_hints(klass)
        fields = {f.name: f for f in dataclasses.fields(klass)}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                              f"allowed: {', '.join(sorted({'kind', *fields}))}")
        name = table.pop("name", klass.kind)
        if not isinstance(name, str) or not name or any(c in name for c in " /\\"):
            raise ConfigError(f"'name' in {where} must be a non-empty string without spaces or "
                              f"slashes; got {name!r}")
        kw: dict[str, Any] = {"name": name}
        prefix = "dense" if where == "[dense]" else f"family.{name}"
        for key, value in table.items():
            kw[key] = _coerce(hints[key], value, f"{prefix}.{key}", fields[key].metadata)
        if kw.get("budgets") is not None:
            missing = [b for b in kw["budgets"] if b not in budgets]
            if missing:
                raise ConfigError(f"'{prefix}.budgets' must be a subset of sweep.budgets "
                                  f"{list(budgets)}; got {missing}")
        fam = klass(**kw)
        fam.check()
        return fam

    def check(self) -> None:
        """Cross-field validation (ranges of single fields are checked when parsed)."""

    def members(self, budget: float, sweep: Any) -> list[Member]:
        """The family's members at ``budget`` under sweep config ``sweep``."""
        raise NotImplementedError

    def n_seeds(self, sweep: Any) -> int:
        return self.seeds if self.seeds is not None else sweep.seeds

    def _fail(self, msg: str) -> ConfigError:
        return ConfigError(f"family {self.name!r}: {msg}")


def _heads(d: int, sweep: Any) -> tuple[int, int]:
    nh = d // sweep.shape.head_dim
    return nh, max(1, nh // sweep.shape.kv_group)


def _moe_builder(*, E: int, k: int, Es: int, G: float, n_dense: int) -> Callable:
    def build(d: int, n_layers: int, sweep: Any) -> ModelSpec:
        nh, nkv = _heads(d, sweep)
        de = 2 * d / G
        return ModelSpec(d_model=d, n_layers=n_layers, n_heads=nh, n_kv_heads=nkv,
                         vocab_size=sweep.vocab_size, d_ffn=(k + Es) * int(de) if n_dense else 0,
                         n_experts=E, top_k=k, n_shared_experts=Es, d_expert=int(de),
                         n_dense_layers=n_dense)
    return build


def _moe_arch(label: str, *, E: int, k: int, Es: int, G: float, n_dense: int,
              divisor: int | None = None, tags: tuple[str, ...] = ()) -> Architecture:
    div = divisor or (int(G) if float(G).is_integer() else 1)
    return Architecture(label, _moe_builder(E=E, k=k, Es=Es, G=G, n_dense=n_dense),
                        active_ffn_per_d=(k + Es) * 2 / G, divisor=div, min_layers=n_dense + 1,
                        tags=tags)


@dataclass(frozen=True, kw_only=True)
class LadderFamily(Family):
    """A family whose architecture configurations each get an IsoFLOP ladder per budget."""

    ladder: bool = True
    """IsoFLOP ladder per configuration (``false``: one searched size per budget)."""
    rungs: int | None = _opt(None, low=3)
    """Base rungs per ladder (``None``: the sweep's ``[ladder] rungs``)."""
    sizes: tuple[float, ...] | None = _opt(None, low=1e-3, high=1e3)
    """Explicit rung targets as multiples of M_opt(C) (each maps to the nearest rung)."""
    m_target: str = _opt("moe", choices=("moe", "dense"))
    """Which [EL] Table 1 allocation law centres the ladder (``AllocationLaw.published``)."""
    m_scale: float = _opt(1.0, low=1e-3, high=1e3)
    """Multiplier on the centre M_opt(C)."""
    n_dense_layers: int = _opt(0, low=0)
    """Leading dense layers ([EL]: 0–3, neutral)."""

    def architectures(self, sweep: Any) -> list[Architecture]:
        raise NotImplementedError

    def centre(self, budget: float) -> float:
        """Ladder centre: the allocation law's compute-optimal M at ``budget`` × m_scale."""
        from moescale.laws import AllocationLaw

        return float(AllocationLaw.published(self.m_target).flops_per_token(budget)) \
            * self.m_scale

    def members(self, budget: float, sweep: Any,
                extend: Mapping[str, tuple[int, int]] | None = None) -> list[Member]:
        """Members at ``budget``; ``extend[arch.label] = (n_lower, n_higher)`` extra rungs."""
        out: list[Member] = []
        for arch in self.architectures(sweep):
            if not self.ladder:
                spec = self._searched(arch, budget, sweep)
                out.append(Member(label=arch.label, spec=spec, config=config_key(spec),
                                  tags=(self.kind, arch.label, *arch.tags)))
            else:
                out += self.ladder_members(arch, budget, sweep,
                                           *(extend or {}).get(arch.label, (0, 0)))
        return out

    def ladder_members(self, arch: Architecture, budget: float, sweep: Any, lower: int = 0,
                       higher: int = 0) -> list[Member]:
        """One configuration's ladder at ``budget`` (see :meth:`rung_shapes`)."""
        out = []
        for k, d, n_layers in self.rung_shapes(arch, budget, sweep, lower, higher):
            spec = arch.build(d, n_layers, sweep)
            label = "-".join(p for p in (arch.label, f"d{d}L{n_layers}") if p)
            out.append(Member(label=label, spec=spec, config=config_key(spec), rung=k,
                              tags=(self.kind, *((arch.label,) if arch.label else ()),
                                    "ladder", *arch.tags)))
        return out

    def _searched(self, arch: Architecture, budget: float, sweep: Any) -> ModelSpec:
        kw = {"seq_len": sweep.seq_len, "vocab_size": sweep.vocab_size, "grid": sweep.shape}
        bb = moe_backbone(self.centre(budget), active_ffn_per_d=arch.active_ffn_per_d,
                          divisor=arch.divisor, min_layers=arch.min_layers, **kw)
        return arch.build(bb.d_model, bb.n_layers, sweep)

    def _valid_rungs(self, arch: Architecture, sweep: Any,
                     budget: float) -> list[tuple[int, int, int]]:
        """Valid rungs (k, d, L) from the smallest up to well past the centre."""
        lad = sweep.ladder
        centre = self.centre(budget)
        n = self.rungs or lad.rungs
        out: list[tuple[int, int, int]] = []
        above = 0
        for k in range(1, 100_000):
            d, n_layers = rung_backbone(k, d_step=lad.d_step, aspect=lad.aspect)
            if not arch.valid(d, n_layers):
                continue
            out.append((k, d, n_layers))
            m = flops_per_token(arch.build(d, n_layers, sweep), seq_len=sweep.seq_len)
            above += m > centre
            if above > n + lad.max_extend:
                break
        if not out:
            raise self._fail(f"no ladder rung fits configuration {arch.label or 'dense'!r}: "
                             f"d_step {lad.d_step} must make 2·d_model divisible by "
                             f"{arch.divisor}")
        return out

    def rung_shapes(self, arch: Architecture, budget: float, sweep: Any, lower: int = 0,
                    higher: int = 0) -> list[tuple[int, int, int]]:
        """Rungs ``(k, d_model, n_layers)`` of ``arch``'s ladder at ``budget``: the base
        rungs centred on M_opt (or the rungs nearest ``sizes``·M_opt), plus ``lower`` /
        ``higher`` extension rungs (clipped where the ladder ends)."""
        valid = self._valid_rungs(arch, sweep, budget)
        logm = [math.log(flops_per_token(arch.build(d, n_layers, sweep), seq_len=sweep.seq_len))
                for _, d, n_layers in valid]
        centre = math.log(self.centre(budget))

        def nearest(target: float) -> int:
            return min(range(len(valid)), key=lambda i: (abs(logm[i] - target), i))

        if self.sizes:
            idx = sorted({nearest(centre + math.log(m)) for m in self.sizes})
            first, last = idx[0], idx[-1]
        else:
            n = min(self.rungs or sweep.ladder.rungs, len(valid))
            first = max(0, min(nearest(centre) - (n - 1) // 2, len(valid) - n))
            last = first + n - 1
            idx = list(range(first, last + 1))
        idx = [*range(max(0, first - lower), first), *idx,
               *range(last + 1, min(len(valid), last + 1 + higher))]
        return [valid[i] for i in idx]


@register_family
@dataclass(frozen=True, kw_only=True)
class DenseLadder(LadderFamily):
    """The dense IsoFLOP ladder (the ``[dense]`` table): ``d_ffn = ffn_ratio·d_model``."""

    kind: ClassVar[str] = "dense"
    m_target: str = _opt("dense", choices=("moe", "dense"))

    def architectures(self, sweep: Any) -> list[Architecture]:
        def build(d: int, n_layers: int, sw: Any) -> ModelSpec:
            nh, nkv = _heads(d, sw)
            return ModelSpec(d_model=d, n_layers=n_layers, n_heads=nh, n_kv_heads=nkv,
                             vocab_size=sw.vocab_size,
                             d_ffn=max(1, round(sw.ladder.ffn_ratio * d)))
        return [Architecture("", build, active_ffn_per_d=sweep.ladder.ffn_ratio)]

    def _searched(self, arch: Architecture, budget: float, sweep: Any) -> ModelSpec:
        return dense_shape(self.centre(budget), seq_len=sweep.seq_len,
                           vocab_size=sweep.vocab_size, grid=sweep.shape)


@register_family
@dataclass(frozen=True, kw_only=True)
class ActivationFamily(LadderFamily):
    """E_a (top_k), E_s and G fixed, E grows ([EL] Table 7): A = E_a/E falls at fixed M.
    With ``control`` the A = 1 same-backbone member (E = E_a) is added."""

    kind: ClassVar[str] = "activation"
    top_k: int = _opt(2, low=1)
    n_experts: tuple[int, ...] = _opt((4, 8, 16), low=1)
    n_shared_experts: int = _opt(1, low=0)
    granularity: float = _opt(2.0, low=0, low_inclusive=False)
    """G = 2·d_model/d_expert."""
    control: bool = True
    """Add the A = 1 same-backbone control (E = E_a): EL relative to it isolates sparsity."""

    def check(self) -> None:
        for e in self.n_experts:
            check_range(f"family.{self.name}.n_experts", e, low=self.top_k, integer=True)

    def experts(self) -> tuple[int, ...]:
        es = set(self.n_experts) | ({self.top_k} if self.control else set())
        return tuple(sorted(es))

    def architectures(self, sweep: Any) -> list[Architecture]:
        return [_moe_arch(f"E{e}", E=e, k=self.top_k, Es=self.n_shared_experts,
                          G=self.granularity, n_dense=self.n_dense_layers,
                          tags=("control",) if e == self.top_k else ())
                for e in self.experts()]


@register_family
@dataclass(frozen=True, kw_only=True)
class GranularityFamily(LadderFamily):
    """E = c·G, E_a = G, E_s = s·G, d_expert = 2d/G ([EL] Table 8 with c = 32, s = 1/2):
    the active FFN width (1+s)·2d, hence M, is the same for every G."""

    kind: ClassVar[str] = "granularity"
    granularities: tuple[int, ...] = _opt((2, 4, 8), low=1)
    experts_per_g: int = _opt(4, low=1)
    """E = experts_per_g·G ([EL] Table 8 uses 32; scaled down for CPU)."""
    shared_per_g: float = _opt(0.5, low=0)
    """E_s = shared_per_g·G ([EL] Table 8: G/2)."""

    def check(self) -> None:
        for g in self.granularities:
            es = self.shared_per_g * g
            if not float(es).is_integer():
                raise ConfigError(
                    f"'family.{self.name}.shared_per_g'·G must be an integer number of shared "
                    f"experts; got {self.shared_per_g}·{g} = {es}")

    def architectures(self, sweep: Any) -> list[Architecture]:
        div = math.lcm(*self.granularities)
        return [_moe_arch(f"G{g}", E=self.experts_per_g * g, k=g, Es=int(self.shared_per_g * g),
                          G=g, n_dense=self.n_dense_layers, divisor=div)
                for g in self.granularities]


@register_family
@dataclass(frozen=True, kw_only=True)
class SharedFamily(LadderFamily):
    """E_a + E_s = ``n_active`` fixed, S = E_s/(E_a+E_s) varies (E = max(n_experts))."""

    kind: ClassVar[str] = "shared"
    n_active: int = _opt(4, low=1)
    n_shared: tuple[int, ...] = _opt((0, 1, 2), low=0, low_inclusive=True)
    n_experts: tuple[int, ...] = _opt((16,), low=1)
    granularity: float = _opt(2.0, low=0, low_inclusive=False)

    def check(self) -> None:
        for s in self.n_shared:
            check_range(f"family.{self.name}.n_shared", s, low=0, high=self.n_active - 1,
                        integer=True)
            if self.n_active - s > max(self.n_experts):
                raise self._fail(f"E_a = {self.n_active - s} exceeds E = {max(self.n_experts)}; "
                                 "raise n_experts")

    def architectures(self, sweep: Any) -> list[Architecture]:
        e = max(self.n_experts)
        return [_moe_arch(f"S{s}", E=e, k=self.n_active - s, Es=s, G=self.granularity,
                          n_dense=self.n_dense_layers) for s in self.n_shared]


@register_family
@dataclass(frozen=True, kw_only=True)
class EqualResourceFamily(Family):
    """[EQ] (arXiv 2506.12119): MoE members with the dense compute-optimal model's backbone
    and total parameters (E·d_expert ≈ d_ffn), across parameter activation rates
    r_a = N_a/N (non-embedding); one size per budget."""

    kind: ClassVar[str] = "equal_resource"
    activation_rates: tuple[float, ...] = _opt((0.2, 0.35, 0.5), low=0, high=1)
    m_scale: float = _opt(1.0, low=0, low_inclusive=False)
    n_experts: tuple[int, ...] = _opt((4, 8, 16), low=1)
    """Extra candidate E values (2…64 are always tried)."""

    def check(self) -> None:
        for r in self.activation_rates:
            check_range(f"family.{self.name}.activation_rates", r, low=0, high=1,
                        low_inclusive=False, high_inclusive=False)

    def members(self, budget: float, sweep: Any) -> list[Member]:
        from moescale.laws import AllocationLaw

        m = float(AllocationLaw.published("dense").flops_per_token(budget)) * self.m_scale
        dense = dense_shape(m, seq_len=sweep.seq_len, vocab_size=sweep.vocab_size,
                            grid=sweep.shape)
        out = []
        for r in self.activation_rates:
            spec = self._member(dense, r)
            out.append(Member(label=f"r{r:g}", spec=spec, config=config_key(spec),
                              tags=(self.kind, f"r{r:g}")))
        return out

    def _member(self, dense: ModelSpec, rate: float) -> ModelSpec:
        n_dense = count_params(dense).non_embedding
        best: tuple[float, ModelSpec] | None = None
        for E in sorted({2, 4, 8, 16, 32, 64, *self.n_experts}):
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
            raise self._fail(f"no MoE matches the dense model's total params "
                             f"(d_ffn={dense.d_ffn}) within 5% with d_expert >= 8")
        if best[0] > 0.05:
            pc = count_params(best[1])
            raise self._fail(
                f"activation rate {rate:g} is unreachable with the dense backbone "
                f"(d_model={dense.d_model}, d_ffn={dense.d_ffn}); closest r_a = "
                f"{pc.active_non_embedding / pc.non_embedding:.3f}. Attention parameters set "
                "a floor on N_a/N at small scale: raise m_scale or pick rates in reach")
        return best[1]


def hparam_grid(base: Member, budget: float, sweep: Any, lr_multipliers: tuple[float, ...],
                batch_multipliers: tuple[float, ...] = (1.0,),
                tags: tuple[str, ...] = ("hparam",)) -> list[Member]:
    """Learning-rate × batch grid at ``budget`` for one member's spec (the ``hparam``
    family, and the sweep's learning-rate scan): learning rate = multiplier × [EL] Eq. 3;
    batch = multiplier × (``[train] batch_tokens``, else Eq. 3), in whole sequences."""
    from moescale.train.config import el_batch_opt, el_lr_opt

    lr0 = el_lr_opt(budget)
    batch = sweep.train.get("batch_tokens") or el_batch_opt(budget)
    out = []
    for lm in lr_multipliers:
        for bm in batch_multipliers:
            # x1 leaves the field to the run's default, so the x1 member is the same run
            # (same key) as the family member it scans around.
            ov: dict[str, Any] = {}
            if lm != 1.0:
                ov["learning_rate"] = lr0 * lm
            if bm != 1.0:
                ov["batch_tokens"] = max(sweep.seq_len,
                                         int(round(batch * bm / sweep.seq_len)) * sweep.seq_len)
            label = "-".join(p for p in (base.label, f"lr{lm:g}-b{bm:g}") if p)
            out.append(Member(label=label, spec=base.spec, config=base.config, overrides=ov,
                              lr_multiplier=lm, rung=base.rung,
                              tags=(*tags, f"lr={lm:g}", f"batch={bm:g}")))
    return out


@register_family
@dataclass(frozen=True, kw_only=True)
class HparamFamily(Family):
    """A learning-rate × batch grid around [EL] Eq. 3 at each budget, for one dense or MoE
    configuration of one searched size."""

    kind: ClassVar[str] = "hparam"
    arch: str = _opt("moe", choices=("moe", "dense"))
    top_k: int = _opt(2, low=1)
    n_experts: tuple[int, ...] = _opt((16,), low=1)
    """The first entry is used."""
    n_shared_experts: int = _opt(1, low=0)
    granularity: float = _opt(2.0, low=0, low_inclusive=False)
    n_dense_layers: int = _opt(0, low=0)
    m_target: str = _opt("moe", choices=("moe", "dense"))
    m_scale: float = _opt(1.0, low=0, low_inclusive=False)
    lr_multipliers: tuple[float, ...] = _opt((0.5, 1.0, 2.0), low=0)
    batch_multipliers: tuple[float, ...] = _opt((0.5, 1.0, 2.0), low=0)

    def check(self) -> None:
        if self.arch == "moe":
            check_range(f"family.{self.name}.n_experts", self.n_experts[0], low=self.top_k,
                        integer=True)

    def members(self, budget: float, sweep: Any) -> list[Member]:
        if self.arch == "dense":
            base_fam: LadderFamily = DenseLadder(name=self.name, ladder=False,
                                                 m_target=self.m_target, m_scale=self.m_scale)
        else:
            base_fam = ActivationFamily(name=self.name, ladder=False, control=False,
                                        top_k=self.top_k, n_experts=self.n_experts[:1],
                                        n_shared_experts=self.n_shared_experts,
                                        granularity=self.granularity,
                                        n_dense_layers=self.n_dense_layers,
                                        m_target=self.m_target, m_scale=self.m_scale)
        base = dataclasses.replace(base_fam.members(budget, sweep)[0], label="")
        return hparam_grid(base, budget, sweep, self.lr_multipliers, self.batch_multipliers)


FAMILY_KINDS: tuple[str, ...] = tuple(k for k in FAMILIES if k != "dense")
"""Kinds a ``[[family]]`` table may name (``dense`` is the ``[dense]`` table)."""
