"""Fitting engine: robust scaling-law fits with bootstrap uncertainty, and EL from runs.

- :mod:`moescale.fit.runs` — the run-record table and its readers (CSV, Parquet, run
  store, the Chinchilla and Clark datasets).
- :mod:`moescale.fit.fitters` — scikit-learn-style fitters, one per law form.
- :mod:`moescale.fit.isoflop` — the optimum of one IsoFLOP ladder (parabola in ln M).
- :mod:`moescale.fit.frontier` — loss–compute frontiers (power law, irreducible).
- :mod:`moescale.fit.measure` — EL the [EL] way with one joint bootstrap (the pipeline the
  report and ``moescale leverage`` print).
- :mod:`moescale.fit.leverage` — Efficiency Leverage measured from dense and MoE runs.

Method and conventions: ``docs/fitting.md`` and LAWS.md §3, §6.
"""

from moescale.fit.base import LawFitter, clone, heldout_score
from moescale.fit.fitters import (
    CHINCHILLA_GRID,
    ChinchillaFitter,
    ELJointFitter,
    ELSeparableFitter,
    FGFitter,
    JointFitter,
    PowerLawFitter,
)
from moescale.fit.frontier import Frontier
from moescale.fit.isoflop import IsoFlopOptimum, extension_side, fit_isoflop
from moescale.fit.leverage import (
    DenseFrontier,
    dense_frontier,
    el_fit_report,
    el_table,
    fit_el_joint,
    fit_el_separable,
    frontier_crossover_compute,
    frontier_crossovers,
    measure_el,
)
from moescale.fit.measure import Measurement, measure_leverage
from moescale.fit.runs import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    RunTable,
    read_chinchilla,
    read_clark,
    read_runs,
    read_store,
    read_table,
)

__all__ = [
    "LawFitter",
    "clone",
    "heldout_score",
    "CHINCHILLA_GRID",
    "ChinchillaFitter",
    "ELJointFitter",
    "ELSeparableFitter",
    "FGFitter",
    "JointFitter",
    "PowerLawFitter",
    "Frontier",
    "Measurement",
    "measure_leverage",
    "IsoFlopOptimum",
    "extension_side",
    "fit_isoflop",
    "DenseFrontier",
    "frontier_crossover_compute",
    "dense_frontier",
    "el_fit_report",
    "el_table",
    "fit_el_joint",
    "fit_el_separable",
    "frontier_crossovers",
    "measure_el",
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "RunTable",
    "read_chinchilla",
    "read_clark",
    "read_runs",
    "read_store",
    "read_table",
]
