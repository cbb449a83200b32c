"""Pin the public surface: subpackage ``__all__``, CLI commands, import direction."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import moescale

PKG = Path(moescale.__file__).parent

EXPECTED = {
    "moescale.spec": {"ModelSpec", "count_params", "flops_per_token", "summary", "load_spec",
                      "from_hf_config"},
    "moescale.laws": {"ELLaw", "published_el", "el_break_even_compute", "HyperparameterLaw",
                      "AllocationLaw", "FGLaw", "JointLaw", "ChinchillaLaw", "get_law"},
    "moescale.fit": {"PowerLawFitter", "ChinchillaFitter", "FGFitter", "JointFitter",
                     "ELJointFitter", "ELSeparableFitter", "measure_el", "read_runs",
                     "RUN_COLUMNS", "heldout_score"},
    "moescale.model": {"Transformer", "build_model", "MoEConfig", "MoELayer", "Router"},
    "moescale.data": {"default_corpus", "open_dataset", "ByteTokenizer", "BPETokenizer"},
    "moescale.train": {"TrainConfig", "train"},
    "moescale.sweep": {"plan_sweep", "run_sweep", "open_store", "RunStore"},
    "moescale.report": {"build_report", "analyze"},
    "moescale.export": {"export_hf", "hf_family", "hf_config", "HF_FAMILIES"},
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_names_resolve_and_include_the_documented_api(module: str) -> None:
    mod = importlib.import_module(module)
    names = set(mod.__all__)
    assert EXPECTED[module] <= names
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names missing attribute {name!r}"


def test_cli_commands() -> None:
    from typer.main import get_command

    from moescale.cli import app

    cmd = get_command(app)
    top = set(cmd.commands)
    assert {"count", "predict", "design", "fit", "leverage", "train", "bench", "sweep",
            "store", "report", "demo", "examples", "export"} <= top
    assert {"el", "hparams", "allocation", "loss"} <= set(cmd.commands["predict"].commands)
    assert {"moe-layer", "train"} <= set(cmd.commands["bench"].commands)
    assert {"plan", "run"} <= set(cmd.commands["sweep"].commands)
    assert {"chinchilla", "power-law", "el"} <= set(cmd.commands["fit"].commands)


# Allowed internal imports per subpackage (the one-way flow of the README).
ALLOWED = {
    "spec": {"spec"},
    "laws": {"laws", "spec"},
    "fit": {"fit", "laws", "spec"},
    "data": {"data", "spec"},  # spec.io.atomic_write only
    "model": {"model", "spec"},
    "train": {"train", "model", "data", "spec", "laws"},
    "sweep": {"sweep", "train", "model", "data", "spec", "laws", "fit", "report"},
    "report": {"report", "fit", "laws", "spec"},
    "export": {"export", "train", "model", "spec"},
}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moescale."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("moescale."):
                    found.add(alias.name.split(".")[1])
    return found - {"errors", "paths"}  # leaf modules every layer may use


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    for path in sorted((PKG / package).glob("*.py")):
        bad = _internal_imports(path) - ALLOWED[package]
        assert not bad, f"{path.relative_to(PKG)} imports moescale.{sorted(bad)}"


def test_import_moescale_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, moescale, moescale.spec, moescale.laws; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
