"""Sweep specs: the TOML file that names compute budgets and run families.

A sweep spec has four kinds of tables (every key is checked; an unknown key is
a :class:`~moescale.errors.ConfigError` naming it and the allowed keys)::

    [sweep]                      # name, budgets (FLOPs, [EL] C = M·D with Ling M),
                                 # seq_len, seed, vocab_size, tokenizer, corpus, throughput
    [shape]                      # the (d_model, n_layers, heads) grid of the shape search
    [train]                      # any TrainConfig field, applied to every run
    [dense]                      # the IsoFLOP ladder: multipliers of [EL] Table 1 M_opt(C)
    [[family]]                   # MoE families: activation | granularity | shared |
                                 # equal_resource | hparam

Conventions (LAWS.md §1–3): A = E_a/E (routed only), G = 2·d_model/d_expert,
S = E_s/(E_a+E_s), compute C = M·D with M Ling's non-embedding training FLOPs per
token at ``seq_len`` ([EL], arXiv 2507.17702, App. C). See ``docs/sweeps.md``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError, check_range
from moescale.laws.base import COMPUTE_MAX
from moescale.sweep.resources import ResourceConfig, parse_resources

__all__ = [
    "SweepSpec",
    "ShapeGrid",
    "DenseLadder",
    "FamilySpec",
    "FAMILY_KINDS",
    "load_sweep_spec",
    "parse_sweep_spec",
]

FAMILY_KINDS = ("activation", "granularity", "shared", "equal_resource", "hparam")
_TOKENIZER_VOCAB = {"byte": 257}
BUDGET_MIN = 1e6
"""Smallest compute budget planned (FLOPs): below it the [EL] Table 1 M_opt(C) is under
one FLOP per token and no shape exists."""


@dataclass(frozen=True, kw_only=True)
class ShapeGrid:
    """Grid of backbone shapes the planner searches to hit a target M.

    The planner picks ``(d_model, n_layers)`` from the grid (heads = d_model /
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
    """Preferred d_model / n_layers at this scale."""
    aspect_weight: float = 0.15
    """Weight of the aspect-ratio penalty against the log-M mismatch."""
    ffn_ratio: tuple[float, float] = (2.0, 4.0)
    """Allowed range of dense d_ffn / d_model when tuning M (nominal 8/3, SwiGLU)."""


@dataclass(frozen=True, kw_only=True)
class DenseLadder:
    """The dense IsoFLOP ladder: at each budget, sizes ``M = m·M_opt(C)`` for m in ``sizes``,
    with M_opt the dense row of [EL] Table 1 (:class:`moescale.laws.AllocationLaw`)."""

    sizes: tuple[float, ...] = (0.5, 1.0, 2.0)
    budgets: tuple[float, ...] | None = None
    """Subset of the sweep budgets (``None``: all)."""


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """One MoE family (or the hyper-parameter grid); every member at a budget shares M."""

    name: str
    kind: str
    budgets: tuple[float, ...] | None = None
    """Subset of the sweep budgets (``None``: all)."""
    m_target: str = "moe"
    """Target M: the ``moe`` or ``dense`` row of [EL] Table 1 (``AllocationLaw``)."""
    m_scale: float = 1.0
    """Multiplier on the target M."""
    n_dense_layers: int = 0
    """Leading dense layers ([EL]: 0–3, neutral)."""
    # activation: E_a fixed, E grows ([EL] Table 7)
    top_k: int = 2
    n_experts: tuple[int, ...] = (4, 8, 16)
    n_shared_experts: int = 1
    granularity: float = 2.0
    """G = 2·d_model/d_expert for the activation/shared/hparam families."""
    # granularity: E = experts_per_g·G, E_a = G, E_s = shared_per_g·G, d_expert = 2d/G (Table 8)
    granularities: tuple[int, ...] = (2, 4, 8)
    experts_per_g: int = 4
    """E = experts_per_g·G ([EL] Table 8 uses 32; scaled down for CPU)."""
    shared_per_g: float = 0.5
    """E_s = shared_per_g·G ([EL] Table 8: G/2)."""
    # shared: E_a + E_s fixed, S varies
    n_active: int = 4
    """E_a + E_s for the shared family."""
    n_shared: tuple[int, ...] = (0, 1, 2)
    # equal_resource ([EQ], arXiv 2506.12119)
    activation_rates: tuple[float, ...] = (0.2, 0.35, 0.5)
    """Target parameter activation rates r_a = N_a/N (non-embedding)."""
    # hparam grid ([EL] Eq. 3)
    arch: str = "moe"
    lr_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    batch_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A parsed, validated sweep spec (see module docstring)."""

    name: str
    budgets: tuple[float, ...]
    """Compute budgets C in FLOPs ([EL] convention C = M·D, Ling M)."""
    seq_len: int = 128
    seed: int = 0
    vocab_size: int = 257
    tokenizer: str = "byte"
    corpus: str | None = None
    throughput: float = 5e10
    """Assumed training throughput in Ling FLOPs per second for time estimates
    (replaced by the store's measured throughput when one is given)."""
    shape: ShapeGrid = field(default_factory=ShapeGrid)
    train: dict[str, Any] = field(default_factory=dict)
    dense: DenseLadder | None = None
    families: tuple[FamilySpec, ...] = ()
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    """Per-run GPUs, cores and processes (``[resources]``, :mod:`moescale.sweep.resources`;
    not part of any run key)."""
    source: str = ""
    """Where the spec was read from (not part of any run key)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the spec (for the store's provenance)."""
        import dataclasses

        out = dataclasses.asdict(self)
        out.pop("source", None)
        out["resources"] = self.resources.to_dict()
        return out


# ---------------------------------------------------------------------------- parsing
def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _num_list(value: Any, name: str, *, integer: bool = False, low: float | None = None,
              low_inclusive: bool = False, high: float | None = None) -> tuple:
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


def _fields(cls: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _parse_shape(table: dict[str, Any]) -> ShapeGrid:
    _check_keys(table, _fields(ShapeGrid), "[shape]")
    kw: dict[str, Any] = {}
    if "d_model" in table:
        kw["d_model"] = _num_list(table["d_model"], "shape.d_model", integer=True, low=1,
                                  low_inclusive=True)
    if "n_layers" in table:
        kw["n_layers"] = _num_list(table["n_layers"], "shape.n_layers", integer=True, low=1,
                                   low_inclusive=True)
    for key in ("head_dim", "kv_group"):
        if key in table:
            check_range(f"shape.{key}", table[key], low=1, integer=True)
            kw[key] = int(table[key])
    for key in ("aspect", "aspect_weight"):
        if key in table:
            check_range(f"shape.{key}", table[key], low=0, low_inclusive=key == "aspect")
            kw[key] = float(table[key])
    if "ffn_ratio" in table:
        lo_hi = _num_list(table["ffn_ratio"], "shape.ffn_ratio", low=0)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"'shape.ffn_ratio' must be [low, high]; got {table['ffn_ratio']!r}")
        kw["ffn_ratio"] = lo_hi
    grid = ShapeGrid(**kw)
    for d in grid.d_model:
        if d % grid.head_dim or (d // grid.head_dim) % grid.kv_group:
            raise ConfigError(
                f"'shape.d_model' entries must be multiples of head_dim·kv_group "
                f"({grid.head_dim}·{grid.kv_group}); got {d}"
            )
    return grid


def _parse_budget_subset(table: dict[str, Any], where: str, budgets: tuple[float, ...]):
    if "budgets" not in table:
        return None
    sub = _num_list(table["budgets"], f"{where}.budgets", low=0)
    missing = [b for b in sub if b not in budgets]
    if missing:
        raise ConfigError(
            f"'{where}.budgets' must be a subset of sweep.budgets {list(budgets)}; got {missing}"
        )
    return sub


def _parse_family(table: dict[str, Any], index: int, budgets: tuple[float, ...]) -> FamilySpec:
    where = f"[[family]] #{index + 1}"
    _check_keys(table, _fields(FamilySpec), where)
    kind = table.get("kind")
    if kind not in FAMILY_KINDS:
        raise ConfigError(f"'kind' in {where} must be one of {', '.join(FAMILY_KINDS)}; "
                          f"got {kind!r}")
    name = table.get("name", kind)
    if not isinstance(name, str) or not name or any(c in name for c in " /\\"):
        raise ConfigError(f"'name' in {where} must be a non-empty string without spaces or "
                          f"slashes; got {name!r}")
    kw: dict[str, Any] = {"name": name, "kind": kind,
                          "budgets": _parse_budget_subset(table, f"family.{name}", budgets)}
    ints = ("top_k", "n_shared_experts", "experts_per_g", "n_active", "n_dense_layers")
    for key in ints:
        if key in table:
            check_range(f"family.{name}.{key}", table[key], low=0, integer=True)
            kw[key] = int(table[key])
    for key in ("granularity", "m_scale", "shared_per_g"):
        if key in table:
            check_range(f"family.{name}.{key}", table[key], low=0,
                        low_inclusive=key == "shared_per_g")
            kw[key] = float(table[key])
    int_lists = ("n_experts", "granularities", "n_shared")
    for key in int_lists:
        if key in table:
            kw[key] = _num_list(table[key], f"family.{name}.{key}", integer=True, low=0,
                                low_inclusive=key == "n_shared")
    for key in ("activation_rates", "lr_multipliers", "batch_multipliers"):
        if key in table:
            kw[key] = _num_list(table[key], f"family.{name}.{key}", low=0)
    if "m_target" in table:
        if table["m_target"] not in ("moe", "dense"):
            raise ConfigError(f"'family.{name}.m_target' must be 'moe' or 'dense'; "
                              f"got {table['m_target']!r}")
        kw["m_target"] = table["m_target"]
    if "arch" in table:
        if table["arch"] not in ("moe", "dense"):
            raise ConfigError(f"'family.{name}.arch' must be 'moe' or 'dense'; "
                              f"got {table['arch']!r}")
        kw["arch"] = table["arch"]
    fam = FamilySpec(**kw)
    if fam.kind in ("activation", "hparam") and fam.arch == "moe":
        check_range(f"family.{name}.top_k", fam.top_k, low=1, integer=True)
        for e in fam.n_experts:
            check_range(f"family.{name}.n_experts", e, low=fam.top_k, integer=True)
    if fam.kind == "activation" and "n_experts" in table and len(fam.n_experts) < 1:
        raise ConfigError(f"'family.{name}.n_experts' must list at least one E")
    if fam.kind == "granularity":
        for g in fam.granularities:
            check_range(f"family.{name}.granularities", g, low=1, integer=True)
            es = fam.shared_per_g * g
            if not float(es).is_integer():
                raise ConfigError(
                    f"'family.{name}.shared_per_g'·G must be an integer number of shared "
                    f"experts; got {fam.shared_per_g}·{g} = {es}"
                )
        check_range(f"family.{name}.experts_per_g", fam.experts_per_g, low=1, integer=True)
    if fam.kind == "shared":
        check_range(f"family.{name}.n_active", fam.n_active, low=1, integer=True)
        for s in fam.n_shared:
            check_range(f"family.{name}.n_shared", s, low=0, high=fam.n_active - 1, integer=True)
    if fam.kind == "equal_resource":
        for r in fam.activation_rates:
            check_range(f"family.{name}.activation_rates", r, low=0, high=1,
                        low_inclusive=False, high_inclusive=False)
    return fam


def parse_sweep_spec(doc: dict[str, Any], *, source: str = "") -> SweepSpec:
    """Validate a sweep-spec document (the parsed TOML) into a :class:`SweepSpec`."""
    _check_keys(doc, {"sweep", "shape", "train", "dense", "family", "resources"},
                "the sweep spec")
    sweep = doc.get("sweep")
    if not isinstance(sweep, dict):
        raise ConfigError("a sweep spec needs a [sweep] table (name, budgets, ...)")
    allowed = {"name", "budgets", "seq_len", "seed", "vocab_size", "tokenizer", "corpus",
               "throughput"}
    _check_keys(sweep, allowed, "[sweep]")
    name = sweep.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"'sweep.name' must be a non-empty string; got {name!r}")
    if "budgets" not in sweep:
        raise ConfigError("'sweep.budgets' is required: a list of compute budgets in FLOPs")
    budgets = tuple(sorted(_num_list(sweep["budgets"], "sweep.budgets", low=BUDGET_MIN,
                                     low_inclusive=True, high=COMPUTE_MAX)))
    kw: dict[str, Any] = {"name": name, "budgets": budgets, "source": source}
    for key, low in (("seq_len", 1), ("seed", 0), ("vocab_size", 2)):
        if key in sweep:
            check_range(f"sweep.{key}", sweep[key], low=low, integer=True)
            kw[key] = int(sweep[key])
    if "throughput" in sweep:
        check_range("sweep.throughput", sweep["throughput"], low=0, low_inclusive=False)
        kw["throughput"] = float(sweep["throughput"])
    tok = sweep.get("tokenizer", "byte")
    if tok not in ("byte", "bpe"):
        raise ConfigError(f"'sweep.tokenizer' must be 'byte' or 'bpe'; got {tok!r}")
    kw["tokenizer"] = tok
    if tok in _TOKENIZER_VOCAB and kw.setdefault("vocab_size", 257) != _TOKENIZER_VOCAB[tok]:
        raise ConfigError(f"'sweep.vocab_size' must be {_TOKENIZER_VOCAB[tok]} with the "
                          f"{tok} tokenizer; got {kw['vocab_size']}")
    if "corpus" in sweep:
        if not isinstance(sweep["corpus"], str):
            raise ConfigError(f"'sweep.corpus' must be a path string; got {sweep['corpus']!r}")
        kw["corpus"] = sweep["corpus"] or None
    shape = doc.get("shape", {})
    if not isinstance(shape, dict):
        raise ConfigError("[shape] must be a table")
    kw["shape"] = _parse_shape(shape)
    train = doc.get("train", {})
    if not isinstance(train, dict):
        raise ConfigError("[train] must be a table")
    reserved = {"compute", "seq_len", "seed", "tokenizer", "corpus"} & set(train)
    if reserved:
        raise ConfigError(f"[train] must not set {', '.join(sorted(reserved))}: they come from "
                          "[sweep] (compute from the budgets)")
    _validate_train(train)
    kw["train"] = dict(train)
    if "dense" in doc:
        dense = doc["dense"]
        if not isinstance(dense, dict):
            raise ConfigError("[dense] must be a table")
        _check_keys(dense, {"sizes", "budgets"}, "[dense]")
        sizes = _num_list(dense.get("sizes", [0.5, 1.0, 2.0]), "dense.sizes", low=1e-3,
                          low_inclusive=True, high=1e3)
        kw["dense"] = DenseLadder(sizes=tuple(sorted(sizes)),
                                  budgets=_parse_budget_subset(dense, "dense", budgets))
    fams = doc.get("family", [])
    if isinstance(fams, dict):
        fams = [fams]
    if not isinstance(fams, list):
        raise ConfigError("[[family]] entries must be tables")
    families = tuple(_parse_family(f, i, budgets) for i, f in enumerate(fams))
    names = [f.name for f in families]
    dup = sorted({n for n in names if names.count(n) > 1} | ({"dense"} & set(names)))
    if dup:
        raise ConfigError(f"duplicate family name(s) {', '.join(map(repr, dup))}: family names "
                          "must be unique and not 'dense' (run names are built from them)")
    kw["families"] = families
    kw["resources"] = parse_resources(doc.get("resources"), ["dense", *names])
    if kw.get("dense") is None and not families:
        raise ConfigError("the sweep spec plans no runs: add a [dense] table or [[family]]")
    return SweepSpec(**kw)


def _validate_train(train: dict[str, Any]) -> None:
    """Check [train] keys against TrainConfig now, so errors name the spec file's table."""
    from moescale.train.config import TrainConfig

    TrainConfig.from_dict({"compute": 1e12, **train})


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec TOML file.

    Examples
    --------
    >>> from pathlib import Path
    >>> spec = load_sweep_spec(Path("examples/sweeps/demo_quick.toml"))  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep spec not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sweep spec {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_sweep_spec(doc, source=str(path))
