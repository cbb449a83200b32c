"""Packaging: version, licence, typing marker, examples shipped as package data."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import moescale
from moescale.cli import main
from moescale.errors import ConfigError
from moescale.resources import copy_example, example_names, example_text

REPO = Path(__file__).resolve().parents[1]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out == f"moescale {moescale.__version__}\n"


def test_license_and_typing_marker_ship():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert (Path(moescale.__file__).parent / "py.typed").is_file()
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["moescale"]


def test_kernel_source_ships_and_ninja_comes_with_train():
    """The compiled CPU loops are built from package data at run time, with ninja."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "**/*.cpp" in meta["tool"]["setuptools"]["package-data"]["moescale"]
    assert (Path(moescale.__file__).parent / "model/csrc/segment_swiglu.cpp").is_file()
    assert any(d.startswith("ninja") for d in meta["project"]["optional-dependencies"]["train"])


def test_core_dependencies_exclude_the_heavy_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert core == {"numpy", "scipy", "pandas", "typer", "rich", "threadpoolctl"}
    extras = project["optional-dependencies"]
    assert {"train", "report", "parquet", "tensorboard", "ray", "hf", "all", "test"} <= set(extras)
    assert any(d.startswith("torch") for d in extras["train"])


def test_examples_are_the_repository_files():
    names = example_names()
    on_disk = sorted(str(p.relative_to(REPO / "examples").with_suffix(""))
                     for p in (REPO / "examples").rglob("*.toml"))
    assert names == on_disk and "tiny-moe" in names and "sweeps/demo" in names
    assert example_text("tiny-moe") == (REPO / "examples/tiny-moe.toml").read_text()


def test_examples_copy(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["examples", "copy", "sweeps/demo_quick", str(tmp_path)])
    assert exc.value.code in (0, None)
    written = tmp_path / "demo_quick.toml"
    assert written.read_text() == (REPO / "examples/sweeps/demo_quick.toml").read_text()
    assert str(written) in capsys.readouterr().out
    with pytest.raises(ConfigError, match="already exists"):
        copy_example("sweeps/demo_quick", tmp_path)
    assert copy_example("tiny-dense", tmp_path / "mine.toml").name == "mine.toml"
    with pytest.raises(ConfigError, match="'example' must be one of"):
        copy_example("no-such", tmp_path)
