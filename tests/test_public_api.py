"""Pin the public surface: subpackage ``__all__``, CLI commands, import direction."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import moescale

PKG = Path(moescale.__file__).parent

EXPECTED = {
    "moescale": {"__version__"},
    "moescale.spec": {
        "FLOPS_CONVENTIONS", "ModelSpec", "ParamCounts", "SUPPORTED_MODEL_TYPES",
        "count_params", "flops_per_token", "from_hf_config", "load_spec", "save_spec",
        "summary"},
    "moescale.laws": {
        "AllocationCoefficients", "AllocationLaw", "ChinchillaCoefficients", "ChinchillaLaw",
        "Coefficients", "ELCoefficients", "ELLaw", "EL_CONVENTIONS", "EQUAL_RESOURCE",
        "EqualResourceRegion", "FGCoefficients", "FGLaw", "FGOptimum", "FittedRange",
        "HyperparameterCoefficients", "HyperparameterLaw", "Interval", "JointCoefficients",
        "JointLRCoefficients", "JointLaw", "LAWS", "Law", "LossLaw", "PowerLaw", "Provenance",
        "RangeReport", "dense_equivalent", "el_break_even_compute", "fg_flops_per_token",
        "fg_shape", "get_law", "law_names", "published_el"},
    "moescale.fit": {
        "CHINCHILLA_GRID", "CURVE_COLUMNS", "ChinchillaFitter", "DenseFrontier",
        "ELJointFitter", "ELSeparableFitter", "FGFitter", "Frontier", "IsoFlopOptimum",
        "JointFitter", "LawFitter", "Measurement", "PowerLawFitter", "RUN_COLUMNS", "RunTable",
        "clone", "frontier_crossover_compute", "measure_leverage", "dense_frontier",
        "el_fit_report", "el_table", "extension_side", "fit_el_joint",
        "fit_el_separable", "fit_isoflop", "frontier_crossovers", "heldout_score", "measure_el",
        "read_chinchilla", "read_clark", "read_runs", "read_store", "read_table"},
    "moescale.model": {
        "FeedForward", "FlopCount", "MOE_BACKENDS", "MoEConfig", "MoELayer", "ModelOutput",
        "ROUTERS", "RoutedExperts", "Router", "Transformer", "bench_moe_layer", "build_model",
        "load_balancing_loss", "measure_forward_flops", "z_loss"},
    "moescale.data": {
        "BPETokenizer", "ByteTokenizer", "CacheEntry", "Corpus", "Document", "FileEntry",
        "TokenDataset", "Tokenizer", "build_token_cache", "default_corpus", "folder_corpus",
        "get_tokenizer", "hf_disk_corpus", "jsonl_corpus", "open_dataset", "parquet_corpus",
        "resolve_corpus", "split_documents", "stdlib_corpus", "token_cache_dir",
        "window_order"},
    "moescale.train": {
        "TRAIN_SCHEMA_VERSION", "TrainConfig", "TrainPlan", "el_batch_opt", "el_lr_opt",
        "lr_at", "resolve_plan", "run_hash", "run_identity", "train", "train_step"},
    "moescale.sweep": {
        "EXECUTORS", "FAMILIES", "Family", "LadderStatus", "PlannedRun", "RECORD_COLUMNS",
        "RunStore", "SweepConfig", "SweepOutcome", "SweepPlan", "config_key", "default_workers",
        "load_sweep_config", "open_store", "parse_sweep_config", "plan_sweep", "run_adaptive",
        "run_key", "run_sweep"},
    "moescale.export": {"HFExport", "HF_FAMILIES", "export_hf", "hf_config", "hf_family",
                        "hf_state_dict"},
    "moescale.report": {
        "Analysis", "Report", "analysis_json", "analyze", "build_report", "headline",
        "load_runs", "summary_lines", "summary_text"},
}
"""The public surface, pinned exactly: adding or removing a public name updates this."""


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_is_pinned_and_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(mod.__all__) == len(set(mod.__all__)), f"{module}.__all__ repeats a name"
    names = set(mod.__all__)
    assert names == EXPECTED[module], (
        f"{module}.__all__ changed: added {sorted(names - EXPECTED[module])}, "
        f"removed {sorted(EXPECTED[module] - names)} (update EXPECTED deliberately)")
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


# The one-way flow the README states (Layout): A -> B lets A import B and, transitively,
# whatever B may import.
FLOW = {
    "cli": {"sweep", "report", "export", "resources"},
    "export": {"train"},  # a finished run (checkpoint, config) as a transformers folder
    "resources": {"spec"},  # packaged example files (moescale examples); spec.io.atomic_write
    "sweep": {"train", "fit"},  # sweep -> fit: adaptive IsoFLOP ladders use fit_isoflop
    "train": {"model", "data"},
    "model": {"spec"},
    "data": set(),
    "report": {"fit"},
    "fit": {"laws"},
    "laws": {"spec"},
    "spec": set(),
}
# Narrow edges, each confined to the named files and modules (README Layout lists them).
NARROW = {
    "train/config.py": {"moescale.laws"},  # [EL] Eq. 3 default learning rate and batch
    "sweep/demo.py": {"moescale.report"},  # the demo ends by writing the report
    "data/*.py": {"moescale.spec.io"},  # atomic_write, for the token cache and tokenizers
}
LEAVES = {"allocator", "errors", "extras", "paths"}
"""Top-level modules anyone may import; they import no subpackage."""


def _reachable(package: str) -> set[str]:
    seen, todo = {package}, [package]
    while todo:
        for nxt in FLOW[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _internal_imports(path: Path) -> set[str]:
    """Full names of the ``moescale.*`` modules ``path`` imports (lazy imports included)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moescale."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("moescale."))
    return {m for m in found if m.split(".")[1] not in LEAVES}


def _allowed(path: Path, package: str, module: str) -> bool:
    if module.split(".")[1] in _reachable(package):
        return True
    rel = path.relative_to(PKG)
    return any(rel.match(pattern) and any(module == m or module.startswith(m + ".")
                                          for m in mods)
               for pattern, mods in NARROW.items())


@pytest.mark.parametrize("package", sorted(FLOW))
def test_imports_flow_one_way(package: str) -> None:
    module = PKG / f"{package}.py"
    for path in [module] if module.exists() else sorted((PKG / package).rglob("*.py")):
        bad = sorted(m for m in _internal_imports(path) if not _allowed(path, package, m))
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_every_subpackage_and_module_is_in_the_flow() -> None:
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"} - LEAVES
    assert packages | modules == set(FLOW)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_no_subpackage(leaf: str) -> None:
    tree = ast.parse((PKG / f"{leaf}.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in mods if m.startswith("moescale.")} <= {"moescale.errors"}


def test_the_flow_rejects_a_backward_import(tmp_path: Path) -> None:
    assert not _allowed(PKG / "spec" / "x.py", "spec", "moescale.laws")
    assert not _allowed(PKG / "laws" / "x.py", "laws", "moescale.fit.isoflop")
    assert not _allowed(PKG / "train" / "trainer.py", "train", "moescale.laws.el")
    assert not _allowed(PKG / "data" / "cache.py", "data", "moescale.spec.accounting")
    assert _allowed(PKG / "data" / "cache.py", "data", "moescale.spec.io")
    assert _allowed(PKG / "sweep" / "planner.py", "sweep", "moescale.laws.hparams")


def test_import_moescale_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, moescale, moescale.spec, moescale.laws; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
