"""Public surface of the fitting engine (names and CLI options are an interface)."""

from __future__ import annotations

import moescale.fit as fit
from moescale.cli import app


def test_fit_all():
    assert set(fit.__all__) == {
        "LawFitter", "clone", "heldout_score", "CHINCHILLA_GRID", "ChinchillaFitter",
        "ELJointFitter", "ELSeparableFitter", "FGFitter", "JointFitter", "PowerLawFitter",
        "IsoFlopOptimum", "extension_side", "fit_isoflop", "Frontier", "Measurement",
        "measure_leverage",
        "DenseFrontier", "frontier_crossover_compute", "dense_frontier", "el_fit_report",
        "el_table",
        "fit_el_joint", "fit_el_separable", "frontier_crossovers", "measure_el",
        "CURVE_COLUMNS", "RUN_COLUMNS", "RunTable", "read_chinchilla", "read_clark",
        "read_runs", "read_store", "read_table",
    }
    for name in fit.__all__:
        assert hasattr(fit, name), name


def _options(command) -> set[str]:
    import typer.main

    cmd = typer.main.get_command(app)
    for part in command:
        cmd = cmd.commands[part]
    return {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def test_cli_options():
    assert {"--method", "--bootstrap", "--seed", "--drop-highest", "--json"} <= _options(
        ["fit", "chinchilla"])
    assert {"--form", "--level", "--bootstrap", "--seed", "--json", "--loss-column"} <= _options(
        ["leverage"])
    assert {"--form", "--dense-frontier", "--heldout-compute", "--json"} <= _options(
        ["fit", "el"])
    assert {"--arch", "--json"} <= _options(["fit", "power-law"])
    for sub in ("fg", "joint"):
        assert {"--method", "--bootstrap", "--json"} <= _options(["fit", sub])
