"""Sweep configs: the TOML file that names compute budgets, ladders and run families.

A sweep config has these tables (every key is checked; an unknown key is a
:class:`~moescale.errors.ConfigError` naming it and the allowed keys)::

    [sweep]      # name, budgets (FLOPs, [EL] C = M·D with Ling M), seeds (replicates),
                 # seq_len, seed, vocab_size, tokenizer, corpus, throughput
    [shape]      # head layout, and the (d_model, n_layers) grid of single-size families
    [ladder]     # IsoFLOP ladders: rungs, d_step, aspect, ffn_ratio, max_extend
    [lr_scan]    # per-configuration learning-rate scan before the ladders: budget, multipliers
    [train]      # any TrainConfig field, applied to every run
    [resources]  # per-run GPUs, cores, processes (moescale.sweep.resources; not in run keys)
    [dense]      # the dense IsoFLOP ladder (kind "dense", see moescale.sweep.families)
    [[family]]   # kind = activation | granularity | shared | equal_resource | hparam

Each ``[dense]`` / ``[[family]]`` table is validated by its kind's class
(:data:`moescale.sweep.families.FAMILIES`). Conventions (LAWS.md §1–3): A = E_a/E (routed
only), G = 2·d_model/d_expert, S = E_s/(E_a+E_s), compute C = M·D with M Ling's
non-embedding training FLOPs per token at ``seq_len`` ([EL], arXiv 2507.17702, App. C).
See ``docs/sweeps.md``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError, check_range
from moescale.laws.base import COMPUTE_MAX
from moescale.sweep.families import FAMILIES, FAMILY_KINDS, Family, LadderFamily, _num_list
from moescale.sweep.resources import ResourceConfig, parse_resources
from moescale.sweep.shapes import ShapeGrid

__all__ = [
    "SweepConfig",
    "ShapeGrid",
    "LadderConfig",
    "LrScan",
    "load_sweep_config",
    "parse_sweep_config",
]

_TOKENIZER_VOCAB = {"byte": 257}
BUDGET_MIN = 1e6
"""Smallest compute budget planned (FLOPs): below it the [EL] Table 1 M_opt(C) is under
one FLOP per token and no shape exists."""


@dataclass(frozen=True, kw_only=True)
class LadderConfig:
    """How IsoFLOP ladders are built and extended (``[ladder]``).

    Rung k: ``d_model = k·d_step``, ``n_layers = max(1, ⌊d_model/aspect + ½⌋)``; dense
    ``d_ffn = ffn_ratio·d_model`` (MoE expert widths follow their family). The base
    ``rungs`` are centred on the allocation law's M_opt(C); after they finish the planner
    adds up to ``max_extend`` rungs per side until the minimum is bracketed (at least
    ``min_each_side`` rungs each side whose loss exceeds the minimum by more than their
    paired standard error; :func:`moescale.fit.isoflop.extension_side`).
    """

    rungs: int = 5
    d_step: int = 0
    """Step of d_model between rungs (0: ``2·head_dim·kv_group``)."""
    aspect: float = 0.0
    """d_model / n_layers (0: ``[shape] aspect``)."""
    ffn_ratio: float = 8 / 3
    """Dense d_ffn / d_model (SwiGLU 8/3)."""
    max_extend: int = 3
    """Most rungs added on each side by adaptive extension (0: no extension)."""
    min_each_side: int = 2


@dataclass(frozen=True, kw_only=True)
class LrScan:
    """The learning-rate scan (``[lr_scan]``): before its ladders run, every ladder
    configuration trains its centre rung at ``budget`` with each multiplier of the [EL]
    Eq. 3 learning rate; the lowest loss picks that configuration's ``lr_multiplier``."""

    budget: float
    lr_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_extend: int = 2
    """Most multipliers added beyond each end of the grid while the best loss sits at that
    end (each one grid step further, the step being the ratio of the two end multipliers):
    the pick is then bracketed, or flagged in the plan's notes (0: no extension)."""


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A parsed, validated sweep config (see module docstring)."""

    name: str
    budgets: tuple[float, ...]
    """Compute budgets C in FLOPs ([EL] convention C = M·D, Ling M)."""
    seq_len: int = 128
    seed: int = 0
    seeds: int = 1
    """Replicates of every ladder/family member: seeds ``seed … seed + seeds − 1``."""
    vocab_size: int = 257
    tokenizer: str = "byte"
    corpus: str | None = None
    throughput: float = 5e10
    """Assumed training throughput in Ling FLOPs per second for time estimates
    (replaced by the store's measured throughput when one is given)."""
    shape: ShapeGrid = field(default_factory=ShapeGrid)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    lr_scan: LrScan | None = None
    train: dict[str, Any] = field(default_factory=dict)
    families: tuple[Family, ...] = ()
    """The ``[dense]`` ladder (named ``dense``) first, then the ``[[family]]`` tables."""
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    """Per-run GPUs, cores and processes (``[resources]``, :mod:`moescale.sweep.resources`;
    not part of any run key)."""
    source: str = ""
    """Where the config was read from (not part of any run key)."""

    @property
    def ladder_families(self) -> tuple[LadderFamily, ...]:
        return tuple(f for f in self.families if isinstance(f, LadderFamily) and f.ladder)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the config (for the store's provenance)."""
        out = dataclasses.asdict(self)
        out["families"] = [{"kind": f.kind, **dataclasses.asdict(f)} for f in self.families]
        out["resources"] = self.resources.to_dict()
        out.pop("source", None)
        return out


# ---------------------------------------------------------------------------- parsing
def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _parse_shape(table: dict[str, Any]) -> ShapeGrid:
    _check_keys(table, {f.name for f in dataclasses.fields(ShapeGrid)}, "[shape]")
    kw: dict[str, Any] = {}
    for key in ("d_model", "n_layers"):
        if key in table:
            kw[key] = _num_list(table[key], f"shape.{key}", integer=True, low=1,
                                low_inclusive=True)
    for key in ("head_dim", "kv_group"):
        if key in table:
            check_range(f"shape.{key}", table[key], low=1, integer=True)
            kw[key] = int(table[key])
    for key in ("aspect", "aspect_weight"):
        if key in table:
            check_range(f"shape.{key}", table[key], low=0,
                        low_inclusive=key == "aspect_weight")
            kw[key] = float(table[key])
    if "ffn_ratio" in table:
        lo_hi = _num_list(table["ffn_ratio"], "shape.ffn_ratio", low=0)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"'shape.ffn_ratio' must be [low, high]; got {table['ffn_ratio']!r}")
        kw["ffn_ratio"] = lo_hi
    grid = ShapeGrid(**kw)
    unit = grid.head_dim * grid.kv_group
    if "d_model" not in table:  # the default grid: the sizes this head layout allows
        grid = dataclasses.replace(grid, d_model=tuple(d for d in grid.d_model if d % unit == 0)
                                   or (unit,))
    for d in grid.d_model:
        if d % grid.head_dim or (d // grid.head_dim) % grid.kv_group:
            raise ConfigError(
                f"'shape.d_model' entries must be multiples of head_dim·kv_group "
                f"({grid.head_dim}·{grid.kv_group}); got {d}"
            )
    return grid


def _parse_ladder(table: dict[str, Any], grid: ShapeGrid) -> LadderConfig:
    _check_keys(table, {f.name for f in dataclasses.fields(LadderConfig)}, "[ladder]")
    kw: dict[str, Any] = {}
    for key, low in (("rungs", 3), ("d_step", 1), ("max_extend", 0), ("min_each_side", 1)):
        if key in table:
            check_range(f"ladder.{key}", table[key], low=low, integer=True)
            kw[key] = int(table[key])
    for key in ("aspect", "ffn_ratio"):
        if key in table:
            check_range(f"ladder.{key}", table[key], low=0, low_inclusive=False)
            kw[key] = float(table[key])
    unit = grid.head_dim * grid.kv_group
    kw.setdefault("d_step", 2 * unit)
    kw.setdefault("aspect", grid.aspect)
    if kw["d_step"] % unit:
        raise ConfigError(f"'ladder.d_step' must be a multiple of head_dim·kv_group ({unit}); "
                          f"got {kw['d_step']}")
    return LadderConfig(**kw)


def _parse_lr_scan(table: dict[str, Any], budgets: tuple[float, ...]) -> LrScan:
    _check_keys(table, {"budget", "lr_multipliers", "max_extend"}, "[lr_scan]")
    budget = table.get("budget", budgets[0])
    check_range("lr_scan.budget", budget, low=BUDGET_MIN, high=COMPUTE_MAX)
    kw: dict[str, Any] = {"budget": float(budget)}
    if "lr_multipliers" in table:
        kw["lr_multipliers"] = tuple(sorted(_num_list(table["lr_multipliers"],
                                                      "lr_scan.lr_multipliers", low=0)))
        if len(kw["lr_multipliers"]) < 2:
            raise ConfigError("'lr_scan.lr_multipliers' must list at least 2 multipliers; got "
                              f"{list(kw['lr_multipliers'])}")
    if "max_extend" in table:
        check_range("lr_scan.max_extend", table["max_extend"], low=0, high=8, integer=True)
        kw["max_extend"] = int(table["max_extend"])
    return LrScan(**kw)


def _parse_sweep_table(sweep: Any) -> dict[str, Any]:
    if not isinstance(sweep, dict):
        raise ConfigError("a sweep config needs a [sweep] table (name, budgets, ...)")
    _check_keys(sweep, {"name", "budgets", "seq_len", "seed", "seeds", "vocab_size",
                        "tokenizer", "corpus", "throughput"}, "[sweep]")
    name = sweep.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"'sweep.name' must be a non-empty string; got {name!r}")
    if "budgets" not in sweep:
        raise ConfigError("'sweep.budgets' is required: a list of compute budgets in FLOPs")
    kw: dict[str, Any] = {"name": name,
                          "budgets": tuple(sorted(_num_list(sweep["budgets"], "sweep.budgets",
                                                            low=BUDGET_MIN, low_inclusive=True,
                                                            high=COMPUTE_MAX)))}
    for key, low in (("seq_len", 1), ("seed", 0), ("seeds", 1), ("vocab_size", 2)):
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
    return kw


def _parse_families(doc: dict[str, Any], budgets: tuple[float, ...]) -> tuple[Family, ...]:
    families: list[Family] = []
    if "dense" in doc:
        dense = _table(doc, "dense")
        if "kind" in dense or "name" in dense:
            raise ConfigError("[dense] must not set 'kind' or 'name' (it is the dense ladder)")
        families.append(FAMILIES["dense"].from_table(dense, where="[dense]", budgets=budgets))
    fams = doc.get("family", [])
    if isinstance(fams, dict):
        fams = [fams]
    if not isinstance(fams, list) or not all(isinstance(f, dict) for f in fams):
        raise ConfigError("[[family]] entries must be tables")
    for i, table in enumerate(fams):
        where = f"[[family]] #{i + 1}"
        if table.get("kind") not in FAMILY_KINDS:
            raise ConfigError(f"'kind' in {where} must be one of {', '.join(FAMILY_KINDS)}; "
                              f"got {table.get('kind')!r}")
        families.append(Family.from_table(table, where=where, budgets=budgets))
    names = [f.name for f in families]
    dup = sorted({n for n in names if names.count(n) > 1}
                 | ({"dense"} & {f.name for f in families if f.kind != "dense"}))
    if dup:
        raise ConfigError(f"duplicate family name(s) {', '.join(map(repr, dup))}: family names "
                          "must be unique and not 'dense' (run names are built from them)")
    if not families:
        raise ConfigError("the sweep config plans no runs: add a [dense] table or [[family]]")
    return tuple(families)


def parse_sweep_config(doc: dict[str, Any], *, source: str = "") -> SweepConfig:
    """Validate a sweep-config document (the parsed TOML) into a :class:`SweepConfig`."""
    _check_keys(doc, {"sweep", "shape", "ladder", "lr_scan", "train", "dense", "family",
                      "resources"}, "the sweep config")
    kw = _parse_sweep_table(doc.get("sweep"))
    kw["source"] = source
    kw["shape"] = _parse_shape(_table(doc, "shape"))
    kw["ladder"] = _parse_ladder(_table(doc, "ladder"), kw["shape"])
    train = _table(doc, "train")
    reserved = {"compute", "seq_len", "seed", "tokenizer", "corpus"} & set(train)
    if reserved:
        raise ConfigError(f"[train] must not set {', '.join(sorted(reserved))}: they come from "
                          "[sweep] (compute from the budgets)")
    _validate_train(train)
    kw["train"] = dict(train)
    kw["families"] = _parse_families(doc, kw["budgets"])
    kw["resources"] = parse_resources(doc.get("resources"), [f.name for f in kw["families"]])
    if "lr_scan" in doc:
        kw["lr_scan"] = _parse_lr_scan(_table(doc, "lr_scan"), kw["budgets"])
    scans = kw.get("lr_scan") is not None or any(f.kind == "hparam" for f in kw["families"])
    if scans and "learning_rate" in train:
        raise ConfigError("[train] learning_rate cannot be combined with [lr_scan] or an hparam "
                          "family: their multipliers apply to the [EL] Eq. 3 learning rate")
    return SweepConfig(**kw)


def _validate_train(train: dict[str, Any]) -> None:
    """Check [train] keys against TrainConfig now, so errors name the config's table."""
    from moescale.train.config import TrainConfig

    TrainConfig.from_dict({"compute": 1e12, **train})


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config TOML file.

    Examples
    --------
    >>> from pathlib import Path
    >>> cfg = load_sweep_config(Path("examples/sweeps/demo_quick.toml"))  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep config not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sweep config {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_sweep_config(doc, source=str(path))
