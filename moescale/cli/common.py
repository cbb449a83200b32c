"""Shared CLI helpers: the one error path, JSON output, rich tables, number parsing."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from moescale.errors import ConfigError, MoescaleError

console = Console()
err_console = Console(stderr=True)


USER_ERROR = 2
"""Exit code of every user-caused failure (bad option, input file, path or resource)."""

# OS errors caused by the paths or resources a user named, not by moescale.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT,
                errno.ELOOP, errno.ENOTEMPTY, errno.EXDEV, errno.EBUSY, errno.ETXTBSY,
                errno.EFBIG, errno.EMFILE}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int = USER_ERROR) -> None:
    """Print ``error: MESSAGE`` as one line on stderr and exit with ``code``."""
    sys.stdout.flush()
    print(f"error: {_one_line(message)}", file=sys.stderr)
    sys.exit(code)


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The text given for an option (``--opt VALUE`` or ``--opt=VALUE``), if any."""
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                return argv[i + 1]
            if opt.startswith("--") and arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


def run_app(app: Any, argv: list[str] | None = None) -> None:
    """Run the typer ``app``: the one error path of every command.

    A :class:`~moescale.errors.MoescaleError`, a usage error (unknown option, bad
    value), a missing optional dependency (naming the extra), or an OS error about a
    path the user named (permission, read-only file system, name too long, disk full)
    becomes one ``error: ...`` line on stderr and exit code 2. Anything else is a bug
    and keeps its traceback.
    """
    try:  # typer >= 0.20 vendors its own click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import exceptions as cx

    prog = os.path.basename(sys.argv[0]) if argv is None else "moescale"
    if prog in ("__main__.py", "-c", ""):
        prog = "moescale"
    try:
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except MoescaleError as exc:
        fail(str(exc))
    except cx.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(USER_ERROR)
    except cx.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        got = ""
        if isinstance(exc, cx.BadParameter) and exc.param is not None:
            value = _given(sys.argv[1:] if argv is None else argv, exc.param.opts)
            got = "" if value is None else f"; got {value!r}"
        fail(exc.format_message() + got + where, exc.exit_code)
    except cx.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        fail("aborted", 1)
    except ImportError as exc:
        from moescale.extras import missing_extra

        missing = missing_extra(exc)  # an optional dependency: name the extra to install
        if missing is None:
            raise
        fail(missing)
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        target = exc.filename if exc.filename is not None else ""
        fail(f"{exc.strerror or exc}: {target}".rstrip(": "))
    sys.stdout.flush()
    sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (NaN/inf become null)."""
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")


def warn(message: str) -> None:
    """A warning on stderr (never stdout, so --json output stays parseable)."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def parse_float(name: str, text: str) -> float:
    """Parse a number given on the command line ("1e22", "3.2e-2")."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name!r} must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name!r} must be finite; got {text!r}")
    return value


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    """Human formatting: 1.23e+22, 17.51B, 0.03125."""
    if x is None:
        return "—"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        x = int(x)
        for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(x) >= scale:
                return f"{x / scale:.{digits - 1}g}{unit} ({x:,})"
        return f"{x:,}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column rich table."""
    table = Table(title=title, show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, str) else fmt_num(value))
    return table
