"""``moescale examples list|copy``: the spec and sweep files shipped with the package."""

from __future__ import annotations

from pathlib import Path

import typer

from moescale.cli.common import console

examples_app = typer.Typer(
    help="Example spec and sweep files shipped with moescale.", no_args_is_help=True
)


@examples_app.command("list")
def list_examples() -> None:
    """Print the names of the shipped examples (use them with `examples copy`)."""
    from moescale.resources import example_names

    for name in example_names():
        console.print(name, highlight=False)


@examples_app.command("copy")
def copy(
    name: str = typer.Argument(..., help="Example name from `moescale examples list`."),
    dest: Path = typer.Argument(Path("."), help="Folder, or a file path ending in .toml."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy one example to DEST and print the path written."""
    from moescale.resources import copy_example

    console.print(str(copy_example(name, dest, overwrite=force)), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(examples_app, name="examples")
