"""``moescale fit ...`` and ``moescale leverage``: fit laws to runs, measure EL from runs.

Each command parses, calls one function of :mod:`moescale.fit`, and prints (``--json``:
one JSON object on stdout; notes go to stderr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich import box
from rich.table import Table

from moescale.cli.common import console, fmt_num, kv_table, print_json, warn
from moescale.errors import ConfigError

fit_app = typer.Typer(help="Fit scaling laws to run data (summed Huber or MLE, bootstrap CIs).",
                      no_args_is_help=True)

_METHOD_HELP = ("huber (summed Huber on log loss, L-BFGS-B from a grid) or mle (Huber "
                "likelihood with learned scale).")


def _common(method: str, bootstrap: int, seed: int, max_starts: int | None) -> dict[str, Any]:
    return {"method": method, "n_resamples": bootstrap, "seed": seed, "max_starts": max_starts}


def _print_fit(title: str, result: dict[str, Any], names: tuple[str, ...]) -> None:
    rows: list[tuple[str, Any]] = []
    ci = result.get("ci", {})
    for k in names:
        if k in ci:
            lo, hi = ci[k]
            rows.append((k, f"{fmt_num(result[k])}  [{fmt_num(lo)}, {fmt_num(hi)}]"))
        else:
            rows.append((k, result[k]))
    rows += [("points", str(result["n_points"])), ("method", str(result["method"])),
             ("outliers (|r| > 3 MAD)", str(result["n_outliers"]))]
    console.print(kv_table(title, rows))
    if result.get("unidentified"):
        warn(f"not identified by these data (interval unknown): {result['unidentified']}")
    if result.get("at_bound"):
        warn(f"stopped on a bound of the search box: {result['at_bound']}")


def fit_chinchilla_cmd(
    data: Path = typer.Argument(..., help="Chinchilla CSV (as shared) or a run table/store."),
    method: str = typer.Option("huber", "--method", help=_METHOD_HELP),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap resamples over runs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    drop_highest: int = typer.Option(
        5, "--drop-highest", help="Drop the k highest-loss points first (Epoch replication: 5)."),
    max_starts: int = typer.Option(64, "--max-starts",
                                   help="Grid starts optimised (best by initial objective)."),
    all_starts: bool = typer.Option(False, "--all-starts",
                                    help="Optimise from all 4,500 grid points (slow)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Chinchilla L(N, D) = E + A/N^α + B/D^β (arXiv 2203.15556; replication 2404.10102)."""
    from moescale.fit import ChinchillaFitter, read_runs

    runs = read_runs(data)
    if drop_highest:
        warn(f"dropping the {drop_highest} highest-loss points before fitting (as the Epoch "
             "replication does); --drop-highest 0 keeps all")
    runs = runs.drop_highest_losses(drop_highest)
    fitter = ChinchillaFitter(**_common(method, bootstrap, seed,
                                        None if all_starts else max_starts))
    result = fitter.fit(runs).summary()
    result["dropped_highest"] = drop_highest
    if as_json:
        print_json(result)
        return
    _print_fit(f"Chinchilla fit ({data.name})", result, ChinchillaFitter.coef_names)


def fit_power_law_cmd(
    runs_path: Path = typer.Argument(..., metavar="RUNS",
                                     help="Run table, run store or Clark file."),
    arch: str = typer.Option("dense", "--arch", help="dense, moe or all."),
    irreducible: bool = typer.Option(False, "--irreducible", help="Fit L = α·C^-β + E."),
    method: str = typer.Option("huber", "--method", help=_METHOD_HELP),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap resamples over runs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss frontier L = α·C^-β (+ E) on the runs' final (compute, loss) points."""
    from moescale.fit import PowerLawFitter, read_runs

    runs = read_runs(runs_path)
    if arch not in ("dense", "moe", "all"):
        raise ConfigError(f"'--arch' must be one of ['dense', 'moe', 'all']; got {arch!r}")
    if arch != "all":
        runs = runs.select(runs.runs["arch"] == arch)
    fitter = PowerLawFitter(irreducible=irreducible, **_common(method, bootstrap, seed, 64))
    result = fitter.fit(runs).summary()
    result["arch"] = arch
    if as_json:
        print_json(result)
        return
    _print_fit(f"power law ({arch} runs)", result, fitter.coef_names)


def fit_el_cmd(
    runs_path: Path = typer.Argument(
        ..., metavar="RUNS", help="Runs (table, store, Clark file) or a measured EL table."),
    form: str = typer.Option("joint", "--form", help="joint (Eq. 13), A, G or C."),
    dense_frontier: str = typer.Option("power-law", "--dense-frontier",
                                       help="power-law or envelope."),
    granularity: str = typer.Option("auto", "--granularity",
                                    help="auto, on or off: fit the G terms of Eq. 13."),
    by: str = typer.Option(None, "--by", help="Separable forms: fit per value of this column."),
    heldout_compute: float = typer.Option(
        None, "--heldout-compute", help="Also fit below this compute and score above it."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap resamples over runs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit the [EL] laws (arXiv 2507.17702) to EL measured from runs."""
    from moescale.fit.leverage import el_fit_report, load_measured_el

    if granularity not in ("auto", "on", "off"):
        raise ConfigError(f"'--granularity' must be one of ['auto', 'on', 'off']; "
                          f"got {granularity!r}")
    measured = load_measured_el(runs_path, dense_frontier)
    use_g = {"auto": None, "on": True, "off": False}[granularity]
    result = el_fit_report(measured, form=form, use_granularity=use_g, by=by,
                           heldout_compute=heldout_compute, n_resamples=bootstrap, seed=seed)
    if as_json:
        print_json(result)
        return
    if form == "joint":
        names = ("a", "d", "gamma", "beta", "A_start", "A_max")
        _print_fit(f"EL joint law (Eq. 13) on {runs_path.name}", result, names)
        if "heldout" in result:
            h = result["heldout"]
            console.print(kv_table("held-out", [
                ("compute threshold", h["compute_threshold"]), ("train / test", f"{h['n_train']}"
                                                                f" / {h['n_test']}"),
                ("RMSE of log EL", h["rmse_log"]), ("mean |rel. error|", h["mean_abs_rel_error"]),
                ("max |rel. error|", h["max_abs_rel_error"])]))
        return
    table = Table(title=f"EL separable form {form}")
    fits = result["fits"]
    for col in (fits[0].keys() if fits else ()):
        table.add_column(str(col))
    for row in fits:
        table.add_row(*(v if isinstance(v, str) else fmt_num(v) for v in row.values()))
    console.print(table)


def _fit_law_cmd(kind: str):
    def command(
        runs_path: Path = typer.Argument(..., metavar="RUNS", help="Run table or run store."),
        method: str = typer.Option("huber", "--method", help=_METHOD_HELP),
        bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap resamples over runs."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        from moescale.fit import FGFitter, JointFitter, read_runs

        cls = FGFitter if kind == "fg" else JointFitter
        runs = read_runs(runs_path)
        if kind == "fg":
            runs = runs.moe()
        result = cls(**_common(method, bootstrap, seed, 64)).fit(runs).summary()
        if as_json:
            print_json(result)
            return
        _print_fit(f"{kind} law on {runs_path.name}", result, cls.coef_names)

    command.__doc__ = {
        "fg": "[FG] L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β (arXiv 2402.07871), MoE runs.",
        "joint": "[JOINT] L(N_act, D, E) (arXiv 2502.05172 Eq. 6), dense and MoE runs.",
    }[kind]
    return command


def leverage_cmd(
    runs_path: Path = typer.Argument(..., metavar="RUNS",
                                     help="Run table (CSV/Parquet), run store or Clark file."),
    dense_frontier: str = typer.Option("power-law", "--dense-frontier",
                                       help="power-law (fit on dense final points) or envelope."),
    frontier_points: str = typer.Option(
        "budget-minima", "--frontier-points",
        help="Power-law frontier through budget-minima (the lowest-loss dense run at each "
        "compute budget, [EL]) or all dense runs (off-optimal ladder sizes too)."),
    loss_column: str | None = typer.Option(
        None, "--loss-column", help="Clark file only: which loss_* column (default "
        "loss_validation); refused for other files."),
    per_point: bool = typer.Option(False, "--per-point", help="EL for every curve point."),
    crossover_by: str = typer.Option(
        None, "--crossover-by", help="Comma-separated columns defining a configuration: fit "
        "its own frontier and report the crossover compute C* where EL = 1."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Efficiency Leverage EL = C_dense(L_moe)/C_moe of every MoE run ([EL] Eq. 1)."""
    from moescale.fit import read_runs
    from moescale.fit.leverage import dense_frontier as dense_frontier_of
    from moescale.fit.leverage import el_table, frontier_crossovers, measure_el

    runs = read_runs(runs_path, loss_column=loss_column)
    measured = measure_el(runs, dense_frontier, per_point=per_point,
                          frontier_points=frontier_points)
    frontier = measured.attrs["frontier"]
    crossovers = None
    if crossover_by:
        cols = tuple(c.strip() for c in crossover_by.split(",") if c.strip())
        fr = dense_frontier_of(runs, "power-law", frontier_points=frontier_points)
        crossovers = frontier_crossovers(runs, cols, dense=fr)
    if as_json:
        out = {"dense_frontier": frontier, "source": str(runs_path),
               "n_runs": int(measured["run"].nunique()),
               "runs": measured.to_dict(orient="records")}
        if crossovers is not None:
            out["crossovers"] = crossovers.to_dict(orient="records")
        print_json(out)
        return
    if crossovers is not None:
        table = Table(title="per-configuration frontiers L = α·C^-β: EL = 1 at C*",
                      box=box.SIMPLE_HEAD)
        short = {"router_type": "router", "num_experts": "E", "n_runs": "runs",
                 "el_at_min_compute": "EL@Cmin", "el_at_max_compute": "EL@Cmax",
                 "crossover_compute": "C*", "el_grows_with_compute": "EL rises"}
        for col in crossovers.columns:
            table.add_column(short.get(col, str(col)), justify="right", no_wrap=True)
        for row in crossovers.itertuples(index=False):
            table.add_row(*(v if isinstance(v, str) else ("yes" if v else "no")
                            if isinstance(v, (bool, np.bool_)) else fmt_num(v, 3) for v in row))
        console.print(table)
    coef = ", ".join(f"{k} = {fmt_num(frontier[k])}" for k in ("alpha", "beta") if k in frontier)
    console.print(f"dense frontier: {frontier['kind']} {coef} ({frontier['n_points']} points, "
                  f"loss {frontier['loss_min']:.3f}–{frontier['loss_max']:.3f})")
    n_extra = int(measured["extrapolated"].sum())
    if n_extra:
        warn(f"{n_extra} EL value(s) extrapolate the dense frontier beyond its loss range")
    labels = ("model_size_label", "router_type", "num_experts")
    if not per_point and all(c in measured.columns for c in labels):
        main = measured
        if "top_k" in measured.columns and "routing_frequency" in measured.columns:
            main = measured[(measured["top_k"] == 1) & (measured["routing_frequency"] == 0.5)]
            if len(main) < len(measured):
                warn(f"{len(measured) - len(main)} run(s) with k > 1 or another routing "
                     "frequency are left out of the table (see --json)")
        pivot = el_table(main)
        table = Table(title="EL at the last step: rows (model size, router), columns E experts",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("size", no_wrap=True)
        table.add_column("router", no_wrap=True)
        for e in pivot.columns:
            table.add_column(str(int(e)), justify="right", no_wrap=True)
        for (size, router), row in pivot.iterrows():
            table.add_row(str(size), str(router),
                          *("—" if v != v else f"{v:.2f}" for v in row.to_numpy()))
        console.print(table)
        return
    table = Table(title="Efficiency Leverage per MoE run")
    for col in ("run", "compute", "loss", "EL", "A", "G", "EL published"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in measured.itertuples():
        table.add_row(str(r.run), fmt_num(r.compute), f"{r.loss:.4f}",
                      f"{r.el:.3f}" + ("*" if r.extrapolated else ""),
                      fmt_num(r.activation_ratio), fmt_num(None if r.granularity != r.granularity
                                                           else r.granularity),
                      "—" if r.el_published != r.el_published else f"{r.el_published:.3f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    fit_app.command("chinchilla")(fit_chinchilla_cmd)
    fit_app.command("power-law")(fit_power_law_cmd)
    fit_app.command("el")(fit_el_cmd)
    fit_app.command("fg")(_fit_law_cmd("fg"))
    fit_app.command("joint")(_fit_law_cmd("joint"))
    app.add_typer(fit_app, name="fit")
    app.command("leverage")(leverage_cmd)
