"""CLI: ``moescale sweep plan|run``, ``store export``, ``report`` and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moescale.cli.common import console, err_console, print_json

sweep_app = typer.Typer(help="Plan and run sweeps of dense and MoE training runs.",
                        no_args_is_help=True)
store_app = typer.Typer(help="Inspect and export a run store.", no_args_is_help=True)


def _eng(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@sweep_app.command("plan")
def plan_cmd(
    config: Path = typer.Argument(..., help="Sweep config (TOML)."),
    store: Path | None = typer.Option(None, "--store",
                                      help="Run store: plan from its results so far (ladder "
                                           "extension, learning-rate scan) and time with its "
                                           "measured throughput."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print the runs a sweep config expands to (params, M, tokens, C, est. time)."""
    from moescale.sweep.config import load_sweep_config
    from moescale.sweep.planner import plan_sweep
    from moescale.sweep.store import open_store

    sw = load_sweep_config(config)
    tp, source, results = None, None, None
    if store is not None:
        with open_store(store, readonly=True) as st:
            tp = st.measured_throughput()
            source = "measured" if tp else None
            results = st.results()
    plan = plan_sweep(sw, results=results, throughput=tp, throughput_source=source)
    if as_json:
        print_json(plan.to_dict())
        return
    table = Table(title=f"sweep {sw.name!r}: {len(plan.runs)} runs, "
                        f"{plan.total_compute:.3g} FLOPs (Ling M·D)")
    for col in ("run", "family", "params total", "params active", "M (FLOPs/tok)", "tokens",
                "C (FLOPs)", "lr", "batch", "est. time"):
        table.add_column(col, justify="left" if col in ("run", "family") else "right")
    for r in plan.runs:
        row = r.row()
        table.add_row(r.name, r.family, _count(row["params_total"]),
                      _count(row["params_active"]), _eng(r.flops_per_token),
                      _eng(float(r.tokens)), _eng(r.compute), _eng(r.learning_rate),
                      str(r.batch_tokens), _duration(r.est_seconds))
    # A pipe gets a wide table (rich would squeeze 10 columns into 80 characters).
    (console if console.is_terminal else Console(width=170)).print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    for lad in plan.ladders:
        if lad.status != "pending":
            console.print(f"ladder {lad.family}/{lad.config} at {lad.budget:.3g}: {lad.status}"
                          + (f" (open side: {lad.open_side})" if lad.open_side else ""))
    console.print(f"estimated time: {_duration(plan.est_seconds)} at "
                  f"{plan.throughput:.3g} FLOPs/s ({plan.throughput_source} throughput), "
                  "one worker")


@sweep_app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Sweep config (TOML)."),
    store: Path = typer.Option(..., "--store", help="Run store (SQLite file; created if new)."),
    backend: str = typer.Option("local", "--backend", help="local | ray | inline."),
    workers: int | None = typer.Option(None, "--workers",
                                       help="Concurrent runs (default: cores // 2, at least 1)."),
    ray_address: str | None = typer.Option(None, "--ray-address",
                                           help="Ray cluster (host:port); default: local Ray."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run failed runs too."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Train the sweep to the end: the learning-rate scan, every ladder, and the rungs
    adaptive extension adds (finished runs skipped, interrupted runs resumed, failures
    recorded). Exit code 1 if any run failed."""
    from moescale.paths import check_store_path
    from moescale.sweep.config import load_sweep_config
    from moescale.sweep.execute import check_backend, run_adaptive
    from moescale.sweep.planner import plan_sweep
    from moescale.sweep.store import check_plan, open_store

    # every option is checked before the store is created
    check_backend(backend, workers)
    check_store_path(store)
    sw = load_sweep_config(config)
    check_plan(plan_sweep(sw))
    with open_store(store) as st:
        outcome, _ = run_adaptive(sw, st, backend=backend, workers=workers,
                                  ray_address=ray_address, retry_failed=retry_failed,
                                  progress=lambda m: err_console.print(m, highlight=False))
    if as_json:
        print_json(outcome.to_dict())
    else:
        recovered = (f", {len(outcome.recovered)} recorded from finished run folders "
                     "(store rebuilt; not trained now)" if outcome.recovered else "")
        console.print(f"{len(outcome.completed)} trained{recovered}, {len(outcome.skipped)} "
                      f"already done, {len(outcome.failed)} failed "
                      f"({_duration(outcome.wall_seconds)}); store: {store}")
        for name, err in outcome.failed.items():
            console.print(f"[red]failed[/red] {name}: {err.splitlines()[0] if err else ''}")
    if outcome.failed:
        raise typer.Exit(1)


@store_app.command("export")
def export_cmd(
    store: Path = typer.Argument(..., help="Run store (SQLite)."),
    fmt: str = typer.Option("csv", "--format", help="csv | parquet."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Run-record file (default STORE_runs.<ext>); curves "
                                         "go beside it as <stem>_curves.<ext>."),
) -> None:
    """Write the run-record table (and the eval curves) as CSV or Parquet."""
    from moescale.errors import ConfigError
    from moescale.sweep.store import open_store

    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"'--format' must be 'csv' or 'parquet'; got {fmt!r}")
    out = out or store.with_name(f"{store.stem}_runs.{fmt}")
    with open_store(store, readonly=True) as st:
        paths = st.export(out, fmt)
    for p in paths:
        console.print(str(p))


@store_app.command("backup")
def backup_cmd(
    store: Path = typer.Argument(..., help="Run store (SQLite)."),
    out: Path = typer.Argument(..., help="The copy: one self-contained SQLite file."),
) -> None:
    """Copy a store, WAL included, into one file (SQLite online backup; safe mid-sweep)."""
    from moescale.sweep.store import open_store

    with open_store(store, readonly=True) as st:
        path = st.backup(out)
    console.print(str(path))


def report_cmd(
    store: Path = typer.Argument(..., help="Run store (SQLite) or run-record CSV/Parquet."),
    out: Path = typer.Option(Path("moescale_report"), "--out", help="Output folder."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print DIR/analysis.json (optima, EL, flags)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0,
                                  help="Joint-bootstrap replicates (below 20: no intervals)."),
) -> None:
    """Measure frontiers and EL with intervals; write DIR/report.html, summary.md,
    analysis.json and plots."""
    from moescale.paths import check_output_dir
    from moescale.report import build_report

    check_output_dir(out)
    rep = build_report(store, out, n_boot=bootstrap)
    if as_json:
        print_json(rep.analysis_json())
        return
    console.print(rep.summary_text())
    console.print(f"report: {rep.html_path}")


def demo_cmd(
    quick: bool = typer.Option(False, "--quick", help="The smallest protocol (< 3 min)."),
    thorough: bool = typer.Option(False, "--thorough",
                                  help="The complete protocol: more budgets and seeds."),
    out: Path = typer.Option(Path("moescale_demo"), "--out", help="Output folder."),
    workers: int | None = typer.Option(None, "--workers",
                                       help="Concurrent single-thread runs (default: one per "
                                            "core)."),
    as_json: bool = typer.Option(False, "--json", help="Print the headline numbers as JSON."),
) -> None:
    """Run the EL measurement protocol (learning-rate scan, adaptive IsoFLOP ladders for
    dense and MoE, the A = 1 control), fit and report, on this machine's CPU."""
    from moescale.sweep.demo import run_demo

    result = run_demo(quick=quick, thorough=thorough, out=out, workers=workers,
                      progress=lambda m: err_console.print(m, highlight=False))
    if as_json:
        print_json(result)
    else:
        console.print(result["text"])
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
    app.add_typer(store_app, name="store")
    app.command("report")(report_cmd)
    app.command("demo")(demo_cmd)
