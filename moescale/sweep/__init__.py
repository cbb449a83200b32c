"""Sweeps: plan runs over compute budgets, execute them resumably, keep them in a store.

- :mod:`moescale.sweep.config` — the sweep-config TOML (budgets, ladders, families).
- :mod:`moescale.sweep.families` — one class per family kind, and their registry.
- :mod:`moescale.sweep.shapes` — ladder rungs and the backbone search that hits a target M.
- :mod:`moescale.sweep.planner` — config (+ results so far) → keyed runs (``sweep plan``).
- :mod:`moescale.sweep.store` — the SQLite run store (``run_records`` / ``run_curves`` views).
- :mod:`moescale.sweep.execute` — idempotent execution, local pool or Ray (``sweep run``).
- :mod:`moescale.sweep.demo` — ``moescale demo``: plan, run, fit and report on this CPU.
"""

from moescale.sweep.config import SweepConfig, load_sweep_config, parse_sweep_config
from moescale.sweep.execute import EXECUTORS, SweepOutcome, default_workers, run_adaptive, run_sweep
from moescale.sweep.families import FAMILIES, Family, config_key
from moescale.sweep.planner import LadderStatus, PlannedRun, SweepPlan, plan_sweep, run_key
from moescale.sweep.store import RECORD_COLUMNS, RunStore, open_store

__all__ = [
    "SweepConfig",
    "load_sweep_config",
    "parse_sweep_config",
    "FAMILIES",
    "Family",
    "config_key",
    "PlannedRun",
    "SweepPlan",
    "LadderStatus",
    "plan_sweep",
    "run_key",
    "RunStore",
    "open_store",
    "RECORD_COLUMNS",
    "SweepOutcome",
    "EXECUTORS",
    "run_sweep",
    "run_adaptive",
    "default_workers",
]
