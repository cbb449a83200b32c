"""``moescale demo``: plan, train, fit and report a small dense + MoE sweep on this CPU.

The sweep specs ship with the package (``moescale/sweep/specs/demo.toml`` and
``demo_quick.toml``; copies in ``examples/sweeps/``). The store lives in the output
folder, so a second invocation skips every finished run and only rebuilds the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moescale.paths import check_output_dir
from moescale.sweep.execute import check_backend, run_sweep
from moescale.sweep.planner import plan_sweep
from moescale.sweep.spec import load_sweep_spec
from moescale.sweep.store import open_store

__all__ = ["run_demo", "demo_spec_path"]

SPECS_DIR = Path(__file__).with_name("specs")


def demo_spec_path(quick: bool = False) -> Path:
    """The packaged demo sweep spec (``demo_quick.toml`` with ``quick``)."""
    return SPECS_DIR / ("demo_quick.toml" if quick else "demo.toml")


def run_demo(
    *,
    quick: bool = False,
    out: str | Path = "moescale_demo",
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo sweep end to end; return the headline numbers and a printable text.

    Returns
    -------
    dict
        ``store``, ``report`` (path of report.html), ``export`` (CSV paths),
        ``wall_seconds``, ``n_trained``, ``n_skipped``, ``failed``, ``headline``
        (:func:`moescale.report.headline`) and ``text``.
    """
    from moescale.report import build_report

    say = progress or print
    t0 = time.perf_counter()
    # every option is checked before the folder and the store are created
    check_backend("local", workers)
    out = check_output_dir(out, field="--out")
    spec = load_sweep_spec(demo_spec_path(quick))
    store_path = out / f"{spec.name}.db"
    with open_store(store_path) as store:
        tp = store.measured_throughput()
        plan = plan_sweep(spec, throughput=tp, throughput_source="measured" if tp else None)
        say(f"moescale demo{' --quick' if quick else ''}: {len(plan.runs)} runs "
            f"(dense IsoFLOP ladder + MoE activation/granularity families) at budgets "
            f"{', '.join(f'{b:.2g}' for b in spec.budgets)} FLOPs; total "
            f"{plan.total_compute:.3g} FLOPs, est. {plan.est_seconds / 60:.1f} min of training "
            f"({plan.throughput_source} {plan.throughput:.2g} FLOPs/s)")
        outcome = run_sweep(plan, store, backend="local", workers=workers, progress=say)
        export = store.export(out / f"{spec.name}_runs.csv", "csv")
    say("fitting frontiers and writing the report ...")
    rep = build_report(store_path, out / "report")
    head = rep.headline()
    wall = time.perf_counter() - t0
    lines = [f"report: {rep.html_path}", f"store:  {store_path}",
             f"runs: {len(outcome.completed)} trained now, "
             f"{len(outcome.skipped) + len(outcome.recovered)} reused, "
             f"{len(outcome.failed)} failed; wall time {wall / 60:.1f} min", ""]
    lines += rep.summary_text().splitlines()
    els = [e for e in head["efficiency_leverage"] if e["el_measured"] is not None]
    if els:
        lines += ["", f"{'MoE run':28s} {'A':>6s} {'G':>4s} {'C':>8s} {'EL meas.':>9s} "
                      f"{'EL Eq.13':>9s}"]
        for e in sorted(els, key=lambda e: (e["compute"], e["run"])):
            lines.append(f"{e['run']:28s} {e['activation_ratio']:6.3g} {e['granularity']:4.3g} "
                         f"{e['compute']:8.2g} {e['el_measured']:9.3f} "
                         f"{e['el_published']:9.3f}")
    return {
        "store": str(store_path), "report": str(rep.html_path),
        "export": [str(p) for p in export], "wall_seconds": wall,
        "n_trained": len(outcome.completed), "n_skipped": len(outcome.skipped),
        "failed": outcome.failed, "headline": head, "text": "\n".join(lines),
    }
