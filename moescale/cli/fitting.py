"""``moescale fit ...`` and ``moescale leverage``: fit laws to runs, measure EL from runs.

Each command parses, calls one function of :mod:`moescale.fit`, and prints (``--json``:
one JSON object on stdout; notes go to stderr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _print_fit(title: str, result: dict[str, Any], names: tuple[str, ...],
               as_json: bool = False) -> None:
    """A fitter's summary as one JSON object, or as a table of coefficients with intervals."""
    if as_json:
        print_json(result)
        return
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
    _print_fit(f"Chinchilla fit ({data.name})", result, ChinchillaFitter.coef_names, as_json)


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
    _print_fit(f"power law ({arch} runs)", result, fitter.coef_names, as_json)


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
        _print_fit(f"{kind} law on {runs_path.name}", result, cls.coef_names, as_json)

    command.__doc__ = {
        "fg": "[FG] L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β (arXiv 2402.07871), MoE runs.",
        "joint": "[JOINT] L(N_act, D, E) (arXiv 2502.05172 Eq. 6), dense and MoE runs.",
    }[kind]
    return command


def leverage_cmd(
    runs_path: Path = typer.Argument(..., metavar="RUNS",
                                     help="Run table (CSV/Parquet), run store or Clark file."),
    form: str = typer.Option(
        "power-law", "--form", help="Frontier form EL is read off: power-law (L = α·C^-β, "
        "[EL] Eq. 1) or irreducible (L = E + α·C^-β). Both are fitted and compared."),
    level: float = typer.Option(0.9, "--level", help="Interval coverage."),
    bootstrap: int = typer.Option(1000, "--bootstrap",
                                  help="Joint-bootstrap replicates (≥ 100)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    loss_column: str | None = typer.Option(
        None, "--loss-column", help="Clark file only: which loss_* column (default "
        "loss_validation); refused for other files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Efficiency Leverage of every MoE run, C_dense(L)/C ([EL] Eq. 1), with intervals."""
    from moescale.fit import measure_leverage, read_runs

    runs = read_runs(runs_path, loss_column=loss_column)
    m = measure_leverage(runs, form=form, level=level, n_boot=bootstrap, seed=seed)
    if as_json:
        print_json(m.leverage_json())
        return
    print_leverage(m)


def print_leverage(m: Any) -> None:
    """Print a :class:`moescale.fit.Measurement`: dense frontier, flags, EL tables."""
    from moescale.fit.leverage import el_table
    from moescale.fit.measure import main_grid

    dense = m.frontier("dense")
    lo, hi = dense.interval()
    coef = ", ".join(f"{k} = {fmt_num(v)} [{fmt_num(lo[k])}, {fmt_num(hi[k])}]"
                     for k, v in dense.coef_dict().items())
    console.print(f"dense frontier ({dense.form}): {coef} ({len(dense.compute)} points, loss "
                  f"{dense.loss_range[0]:.3f}–{dense.loss_range[1]:.3f}; {m.level:.0%} "
                  "intervals)")
    for flag in m.flags:
        warn(flag)
    runs = m.runs
    labels = ("model_size_label", "router_type", "num_experts")
    if all(c in runs.columns for c in labels):
        main, left = main_grid(runs)
        if left:
            warn(f"{left} run(s) with k > 1 or another routing frequency are left out of the "
                 "table (see --json)")
        pivot = el_table(main)
        table = Table(title=f"EL at the last step ({m.level:.0%} intervals: --json); * = "
                      "extrapolated", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
        table.add_column("size", no_wrap=True, min_width=4)
        table.add_column("router", no_wrap=True, min_width=6)
        for e in pivot.columns:
            table.add_column(str(int(e)), justify="right", no_wrap=True, min_width=5)
        extra = el_table(main.assign(x=main["extrapolated"].astype(float)), value="x")
        for (size, router), row in pivot.iterrows():
            flags_row = extra.loc[(size, router)]
            table.add_row(str(size), str(router), *(
                "—" if v != v else f"{v:.2f}" + ("*" if flags_row[e] > 0 else "")
                for e, v in zip(pivot.columns, row.to_numpy(), strict=True)))
        console.print(table)
        return
    if len(m.el):
        table = Table(title=f"Frontier-ratio EL per MoE configuration ({m.level:.0%} interval)",
                      box=box.SIMPLE_HEAD)
        for col in ("config", "C", "EL", "interval", "claim", "vs A=1 control"):
            table.add_column(col, justify="left" if col in ("config", "claim") else "right")
        for r in m.el.itertuples():
            ctrl = ("—" if r.el_vs_control != r.el_vs_control else
                    f"{r.el_vs_control:.3f} [{r.el_vs_control_low:.3f}, "
                    f"{r.el_vs_control_high:.3f}]")
            table.add_row(str(r.config), fmt_num(r.budget), f"{r.el:.3f}" +
                          ("*" if r.extrapolated else ""),
                          f"[{r.el_low:.3f}, {r.el_high:.3f}]", r.claim, ctrl)
        console.print(table)
    table = Table(title=f"Per-run EL = C_dense(L)/C ({m.level:.0%} interval; * = extrapolated)",
                  box=box.SIMPLE_HEAD)
    for col in ("run", "C", "loss", "EL", "interval", "seeds", "A", "G"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in runs.itertuples():
        table.add_row(str(r.run), fmt_num(r.compute), f"{r.loss:.4f}",
                      f"{r.el:.3f}" + ("*" if r.extrapolated else ""),
                      f"[{r.el_low:.3f}, {r.el_high:.3f}]", str(r.n_seeds),
                      fmt_num(r.activation_ratio),
                      "—" if r.granularity != r.granularity else fmt_num(r.granularity))
    console.print(table)


def register(app: typer.Typer) -> None:
    fit_app.command("chinchilla")(fit_chinchilla_cmd)
    fit_app.command("power-law")(fit_power_law_cmd)
    fit_app.command("el")(fit_el_cmd)
    fit_app.command("fg")(_fit_law_cmd("fg"))
    fit_app.command("joint")(_fit_law_cmd("joint"))
    app.add_typer(fit_app, name="fit")
    app.command("leverage")(leverage_cmd)
