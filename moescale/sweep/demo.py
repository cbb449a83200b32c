"""``moescale demo``: the [EL] measurement protocol, end to end, at budgets this CPU affords.

The sweep configs ship with the package (``moescale/sweep/presets/demo.toml``,
``demo_quick.toml`` and ``demo_thorough.toml``; copies in ``examples/sweeps/``): dense and
MoE configurations (with the A = 1 same-backbone control) each get a learning-rate scan
and an IsoFLOP ladder per budget, extended until its minimum is bracketed
(:func:`moescale.sweep.execute.run_adaptive`). Small models train fastest on one thread,
so the demo runs one single-thread worker per core. The store lives in the output
folder: a second invocation skips every finished run and only rebuilds the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moescale.errors import ConfigError
from moescale.paths import check_output_dir
from moescale.sweep.config import load_sweep_config
from moescale.sweep.execute import check_backend, run_adaptive
from moescale.sweep.store import open_store

__all__ = ["run_demo", "demo_config_path", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).with_name("presets")


def demo_config_path(quick: bool = False, thorough: bool = False) -> Path:
    """The packaged demo sweep config (``demo_quick.toml`` / ``demo_thorough.toml``)."""
    if quick and thorough:
        raise ConfigError("'--quick' and '--thorough' exclude each other; pick one")
    name = "demo_quick" if quick else "demo_thorough" if thorough else "demo"
    return PRESETS_DIR / f"{name}.toml"


def _ladder_lines(plan: Any) -> list[str]:
    lines = ["", "IsoFLOP ladders (minimum bracketed: >= 2 rungs each side above it by more "
                 "than the paired SE):"]
    by_config: dict[str, list[Any]] = {}
    for lad in plan.ladders:
        by_config.setdefault(lad.config, []).append(lad)
    for config, lads in sorted(by_config.items(), key=lambda kv: (kv[0] != "dense", kv[0])):
        marks = ", ".join(f"{lad.budget:.2g}: {lad.status}"
                          + (f" ({len(lad.m)} rungs)" if lad.m else "") for lad in lads)
        mult = plan.lr_multipliers.get(config)
        lr = f"; lr ×{mult:g} (scan)" if mult is not None else ""
        lines.append(f"  {config:22s} {marks}{lr}")
    n_br = sum(lad.status == "bracketed" for lad in plan.ladders)
    lines.append(f"  {n_br} of {len(plan.ladders)} ladders bracketed")
    return lines


def run_demo(
    *,
    quick: bool = False,
    thorough: bool = False,
    out: str | Path = "moescale_demo",
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo sweep end to end; return the headline numbers and a printable text.

    Parameters
    ----------
    quick, thorough : bool
        The smallest protocol (CI) / the complete one (more budgets and seeds).
    workers : int, optional
        Concurrent single-thread runs; default one per core.

    Returns
    -------
    dict
        ``store``, ``report`` (path of report.html), ``export`` (CSV paths),
        ``wall_seconds``, ``n_trained``, ``n_skipped``, ``failed``, ``ladders``,
        ``lr_multipliers``, ``headline`` (:func:`moescale.report.headline`) and ``text``.
    """
    from moescale.report import build_report

    say = progress or print
    t0 = time.perf_counter()
    # every option is checked before the folder and the store are created
    workers = workers if workers is not None else (os.cpu_count() or 1)
    check_backend("local", workers)
    sw = load_sweep_config(demo_config_path(quick, thorough))
    out = check_output_dir(out, field="--out")
    store_path = out / f"{sw.name}.db"
    with open_store(store_path) as store:
        tp = store.measured_throughput()
        say(f"moescale demo ({sw.name}): dense and MoE IsoFLOP ladders at budgets "
            f"{', '.join(f'{b:.2g}' for b in sw.budgets)} FLOPs, {sw.seeds} seed(s), "
            f"{workers} single-thread worker(s)")
        outcome, plan = run_adaptive(sw, store, throughput=tp, backend="local",
                                     workers=workers, progress=say)
        export = store.export(out / f"{sw.name}_runs.csv", "csv")
    say("fitting frontiers and writing the report ...")
    rep = build_report(store_path, out / "report")
    head = rep.headline()
    wall = time.perf_counter() - t0
    lines = [f"report: {rep.html_path}", f"store:  {store_path}",
             f"runs: {len(outcome.completed)} trained now, "
             f"{len(outcome.skipped) + len(outcome.recovered)} reused, "
             f"{len(outcome.failed)} failed; wall time {wall / 60:.1f} min", ""]
    lines += rep.summary_text().splitlines()
    lines += _ladder_lines(plan)
    return {
        "store": str(store_path), "report": str(rep.html_path),
        "export": [str(p) for p in export], "wall_seconds": wall,
        "n_trained": len(outcome.completed), "n_skipped": len(outcome.skipped),
        "failed": outcome.failed, "ladders": [s.to_dict() for s in plan.ladders],
        "lr_multipliers": dict(plan.lr_multipliers), "headline": head,
        "text": "\n".join(lines),
    }
