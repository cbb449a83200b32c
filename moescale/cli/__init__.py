"""The ``moescale`` command line: a thin typer app.

Each command parses its options, calls one library function and prints. Every
command group lives in its own module with a ``register(app)`` function. Any
:class:`~moescale.errors.MoescaleError`, and a missing optional dependency
(:mod:`moescale.extras`), becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="moescale",
    help="Efficiency Leverage and scaling laws for Mixture-of-Experts language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from moescale import __version__

        print(f"moescale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Efficiency Leverage and scaling laws for Mixture-of-Experts language models."""


def _register_all() -> None:
    """Every command group registers its commands on :data:`app` (none imports torch)."""
    from moescale.cli import (
        bench,
        count,
        examples,
        export,
        fitting,
        laws,
        models,
        sweeps,
        training,
    )

    for module in (count, bench, laws, fitting, training, sweeps, models, examples, export):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user-caused failure is one ``error:`` line and exit code 2
    (see :func:`moescale.cli.common.run_app`)."""
    from moescale.cli.common import run_app

    run_app(app, argv)
