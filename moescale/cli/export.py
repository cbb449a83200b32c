"""``moescale export RUN_DIR --format hf --out DIR``: a finished run as a transformers folder."""

from __future__ import annotations

from pathlib import Path

import typer

from moescale.cli.common import console
from moescale.errors import ConfigError

FORMATS = ("hf",)


def export(
    run_dir: Path = typer.Argument(..., help="A finished training run folder."),
    out: Path = typer.Option(..., "--out", help="New or empty folder to write."),
    fmt: str = typer.Option("hf", "--format", help="hf: transformers config.json + "
                            "model.safetensors (AutoModelForCausalLM.from_pretrained)."),
) -> None:
    """Export RUN_DIR's final weights to a format other tools load."""
    if fmt not in FORMATS:
        raise ConfigError(f"'--format' must be one of {', '.join(FORMATS)}; got {fmt!r}")
    from moescale.export import export_hf

    done = export_hf(run_dir, out)
    console.print(f"exported {run_dir} as {done.architecture} (model_type "
                  f"{done.model_type!r}, {done.n_tensors} tensors) to {done.out_dir}",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
