"""Issue #14 fuzz test: hostile numbers, model configs, sweep specs, run tables and
output paths through the real CLI.

Every case must either succeed (exit 0) or fail the one user-facing way: exit code 2
and exactly one ``error: ...`` line on stderr. Never a traceback (any other exception),
never a hang (a per-case wall-clock limit), and never a write outside the named output
(each case runs in an empty temporary working folder whose file tree is compared before
and after). Hypothesis is derandomized (seeded by the test), keeps no example database,
and the case counts are fixed, so CI time is bounded (about a minute on two cores).

Cases run in-process (``moescale.cli.main``) so hundreds fit the budget; the timeout is
a ``SIGALRM`` raised into the case. A handful of cases go through a real subprocess as
well, to check the interpreter-level behaviour (no traceback, exit code).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moescale.cli import main

REPO = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 30.0
_SCALE = int(os.environ.get("MOESCALE_FUZZ_SCALE", "1"))
CASES = {k: v * _SCALE for k, v in
         {"numeric": 160, "model": 80, "hf": 50, "sweep": 50, "table": 40, "export": 40}.items()}
"""Examples per fuzz test: 420 in CI (seeded); MOESCALE_FUZZ_SCALE=N > 1 runs N times as
many, randomly seeded, for a local search."""

SETTINGS = dict(derandomize=_SCALE == 1, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise CaseTimeout(f"case ran longer than {CASE_TIMEOUT_S} s")


def _print_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            out[str(p.relative_to(root))] = (st_.st_mode, st_.st_size if p.is_file() else 0)
    return out


def run_case(argv: list[str], cwd: Path, allowed: set[str] = frozenset()) -> tuple[int, str]:
    """Run the CLI in ``cwd``; check the contract; return (exit code, stdout)."""
    before = _tree(cwd)
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    prev = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    code = None
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            # as a user sees them: every warning printed on stderr (pytest would record them)
            warnings.simplefilter("always")
            warnings.showwarning = _print_warning
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev)
        os.chdir(old)
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), f"exit {code} for {argv}: {err.getvalue()[-2000:]}"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
    assert "Traceback" not in err.getvalue()
    after = _tree(cwd)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= set(allowed), f"{argv} wrote outside its output: {sorted(changed)}"
    return code, out.getvalue()


# ----------------------------------------------------------------------------- values
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e7, max_value=1.7e308),  # huge: overflow in power laws
    st.floats(min_value=-1e308, max_value=1e-7),  # zero, tiny, negative
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 5e-324, 0.5, 1.0, 2.5, 7.0, 1e6, 1e12, 1e18,
                     1e22, 3e25, 1e30, 1.0000001e30, 1e40, 1e300, 1.8e308]),
    st.floats(min_value=1e-3, max_value=1e26),
)
_NUM_TEXT = st.one_of(
    _FLOATS.map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "abc", "1e", "--1", "0x10", "nan", "-inf", "1_000", " 3 ", "1e22e3",
                     "١٢", "\x00"]),
)


def _num(low: float, high: float, *, integer: bool = False):
    """A plausible value in [low, high] one time in three, else a hostile one."""
    good = (st.integers(min_value=int(low), max_value=int(high)) if integer else
            st.floats(min_value=low, max_value=high))
    return st.one_of(good.map(repr), _FLOATS.map(repr), _NUM_TEXT)


@st.composite
def numeric_command(draw):
    """One command with every numeric option drawn from plausible and hostile numbers."""
    def v(low: float = 1e-3, high: float = 1e26, integer: bool = False) -> str:
        return draw(_num(low, high, integer=integer))

    kind = draw(st.sampled_from(["el", "equiv", "hparams", "alloc", "loss", "optimum",
                                 "design", "count"]))
    if kind == "el":
        return ["predict", "el", "-A", v(0.001, 1), "-G", v(0.5, 64), "-C", v(1e15, 1e28)]
    if kind == "equiv":
        return ["predict", "dense-equivalent", "-A", v(0.001, 1), "-G", v(0.5, 64),
                "-C", v(1e15, 1e28), "-D", v(1e6, 1e14)]
    if kind == "hparams":
        return ["predict", "hparams", "-C", v(1e12, 1e28)]
    if kind == "alloc":
        return ["predict", "allocation", "-C", v(1e12, 1e28),
                "--arch", draw(st.sampled_from(["dense", "moe", "x"]))]
    law = draw(st.sampled_from(["fg", "joint", "chinchilla", "epoch", "nolaw"]))
    extra = []
    if draw(st.booleans()):
        extra += ["-E", v(1, 256, integer=True)]
    if kind == "loss":
        if draw(st.booleans()):
            extra += ["--granularity-fg", v(1, 64, integer=True)]
        return ["predict", "loss", "--law", law, "-N", v(1e6, 1e12), "-D", v(1e8, 1e13),
                *extra]
    if kind == "optimum":
        return ["predict", "optimum", "--law", law, "-C", v(1e17, 1e26), *extra]
    if kind == "design":
        dlaw = draw(st.sampled_from(["ling2025", "fg", "joint"]))
        opts = ["--top", draw(st.sampled_from(['1', '3', '0', '-1', '2.5', 'x']))]
        if draw(st.booleans()):
            opts += ["--max-total-params", v(1e6, 1e13)]
        if draw(st.booleans()):
            opts += ["--memory-gb", v(0.01, 1e5)]
        return ["design", "-C", v(1e17, 1e26), "--law", dlaw, *opts]
    return ["count", str(REPO / "examples" / "tiny-moe.toml"), "--seq-len",
            v(1, 1e6, integer=True)]


@settings(max_examples=CASES["numeric"], **SETTINGS)
@given(argv=numeric_command())
# inputs that broke the contract before #14: a numpy warning line, a hang, a traceback
@example(argv=["predict", "el", "-A", "0.1", "-G", "1e300", "-C", "1e20"])
@example(argv=["predict", "dense-equivalent", "-A", "0.1", "-G", "1e300", "-C", "1e20",
               "-D", "1e10"])
@example(argv=["design", "-C", "1e40", "--law", "ling2025"])
@example(argv=["design", "-C", "1e30", "--law", "fg", "--max-total-params", "1e10"])
def test_fuzz_numeric_options(argv):
    with tempfile.TemporaryDirectory() as d:
        run_case(argv, Path(d))


# ----------------------------------------------------------------------------- configs
_ANY = st.one_of(
    st.integers(min_value=-3, max_value=5000),
    st.sampled_from([0, 1, 2, 64, 257, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=6),
)
_MODEL_FIELDS = {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
                 "vocab_size": 257, "d_ffn": 704, "n_experts": 16, "top_k": 2,
                 "n_shared_experts": 1, "d_expert": 128, "n_dense_layers": 1}


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if -(2**63) <= v < 2**63 else f"{float(v)!r}"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)


@st.composite
def model_toml(draw):
    fields = dict(_MODEL_FIELDS)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        choice = draw(st.sampled_from(["plausible", "plausible", "hostile", "drop"]))
        if choice == "plausible":
            fields[key] = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256, 512]))
        elif choice == "hostile":
            fields[key] = draw(_ANY)
        else:
            del fields[key]
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in fields.items())
    return f"schema_version = 1\n\n[model]\n{body}\n"


@settings(max_examples=CASES["model"], **SETTINGS)
@given(text=model_toml(), json_out=st.booleans())
def test_fuzz_model_config(text, json_out):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.toml"
        path.write_text(text)
        run_case(["count", str(path), *(["--json"] if json_out else [])], Path(d))


_HF = json.loads((REPO.parent / "shared" / "configs" / "Mixtral-8x7B-v0.1.json").read_text()) \
    if (REPO.parent / "shared" / "configs" / "Mixtral-8x7B-v0.1.json").is_file() else None


@pytest.mark.skipif(_HF is None, reason="../shared/configs not found")
@settings(max_examples=CASES["hf"], **SETTINGS)
@given(changes=st.dictionaries(
    st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "num_local_experts",
                     "num_experts_per_tok", "vocab_size", "model_type", "head_dim"]),
    _ANY, max_size=3))
def test_fuzz_hf_config(changes):
    cfg = {**_HF, **changes}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(cfg, allow_nan=True))
        run_case(["count", str(path)], Path(d))


# ----------------------------------------------------------------------------- sweep specs
@st.composite
def sweep_toml(draw):
    hostile = st.one_of(_FLOATS, st.integers(min_value=-5, max_value=10**20))
    budget = st.one_of(st.floats(min_value=1e10, max_value=1e13), st.floats(1e10, 1e13),
                       hostile)
    nums = st.one_of(st.floats(min_value=0.3, max_value=3.0), hostile)
    budgets = draw(st.one_of(st.lists(budget, min_size=1, max_size=3, unique=True),
                             st.lists(budget, min_size=1, max_size=2, unique=True),
                             budget, st.text(max_size=3)))
    lines = ["[sweep]", f"name = {_toml(draw(st.sampled_from(['s', 's', 's', '', 'a b'])))}",
             f"budgets = {_toml(budgets)}"]
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"seq_len = {_toml(draw(_ANY))}")
    if draw(st.integers(0, 3)) > 0:
        lines += ["[dense]", f"sizes = {_toml(draw(st.lists(nums, max_size=3, unique=True)))}"]
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["activation", "granularity", "shared", "bogus"]))
        lines += ["[[family]]", 'name = "f"', f'kind = "{kind}"']
        ints = st.one_of(st.sampled_from([2, 4, 8, 16]), _ANY)
        if kind == "activation":
            lines.append(f"n_experts = "
                         f"{_toml(draw(st.lists(ints, min_size=1, max_size=3, unique_by=repr)))}")
        elif kind == "granularity":
            lines.append(f"granularities = "
                         f"{_toml(draw(st.lists(ints, min_size=1, max_size=3, unique_by=repr)))}")
    if draw(st.integers(0, 3)) == 0:
        lines += ["[train]", f"batch_tokens = {_toml(draw(_ANY))}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=CASES["sweep"], **SETTINGS)
@given(text=sweep_toml())
def test_fuzz_sweep_spec(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.toml"
        path.write_text(text)
        run_case(["sweep", "plan", str(path), "--json"], Path(d))


# ----------------------------------------------------------------------------- run tables
@st.composite
def run_table(draw):
    n = draw(st.integers(min_value=0, max_value=9))
    bad = draw(st.integers(0, 2)) == 0  # one table in three has hostile cells

    def cell(good):
        return draw(st.one_of(_FLOATS, st.sampled_from(["x", ""]))) if bad and \
            draw(st.integers(0, 3)) == 0 else draw(good)

    arch = ["dense" if i % 2 == 0 else "moe" for i in range(n)]
    compute = [cell(st.sampled_from([1e18, 3e18, 1e19, 3e19, 1e20])) for _ in range(n)]
    cols = {"run": [f"r{i}" for i in range(n)],
            "arch": [cell(st.just(a)) for a in arch],
            "compute": compute,
            "loss": [cell(st.floats(min_value=2.0, max_value=4.0)) for _ in range(n)]}
    for extra in draw(st.lists(st.sampled_from(["activation_ratio", "granularity", "tokens",
                                                "status"]), max_size=3, unique=True)):
        good = {"activation_ratio": st.sampled_from([1 / 8, 1 / 4, 1.0]),
                "granularity": st.sampled_from([1.0, 2.0, 8.0]),
                "tokens": st.sampled_from([1e9, 1e10]),
                "status": st.sampled_from(["done", "failed"])}[extra]
        cols[extra] = [cell(good) for _ in range(n)]
    drop = draw(st.sampled_from([None, None, None, "run", "loss", "arch"]))
    if drop:
        cols.pop(drop)
    header = ",".join(cols)
    rows = [",".join(str(cols[c][i]) for c in cols) for i in range(n)]
    return "\n".join([header, *rows]) + "\n"


@settings(max_examples=CASES["table"], **SETTINGS)
@given(text=run_table(), cmd=st.sampled_from([["fit", "power-law"], ["leverage"],
                                              ["fit", "el", "--form", "C"]]))
def test_fuzz_run_table(text, cmd):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "runs.csv"
        path.write_text(text)
        run_case([*cmd[:2], str(path), *cmd[2:]], Path(d))


# ----------------------------------------------------------------------------- output paths
@pytest.fixture(scope="module")
def small_store():
    from moescale.sweep.config import parse_sweep_config
    from moescale.sweep.execute import run_sweep
    from moescale.sweep.planner import plan_sweep
    from moescale.sweep.store import open_store

    def fake(payload):
        return {"result": {"status": "completed", "loss": 3.0, "tokens": 10,
                           "flops": payload["config"]["compute"]}, "curve": []}

    d = Path(tempfile.mkdtemp())
    with open_store(d / "own.db") as s:
        run_sweep(plan_sweep(parse_sweep_config({"sweep": {"name": "f", "budgets": [1e12]},
                                               "dense": {"sizes": [1]}})), s,
                  backend="inline", run_fn=fake)
    yield (d / "own.db").read_bytes()


_OUT_NAMES = st.one_of(
    st.sampled_from(["", ".", "..", "own.db", "own.db-wal", "/dev/null", "dir", "dir/", "a/b.csv",
                     "x" * 256 + ".csv", "ok#1?%.csv", "link.csv", "dangling.csv", "-",
                     "out.csv", "out.parquet", "own"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
            min_size=1, max_size=12).map(lambda s: s + ".csv"),
)


@settings(max_examples=CASES["export"], **SETTINGS)
@given(name=_OUT_NAMES, fmt=st.sampled_from(["csv", "parquet", "xml"]))
def test_fuzz_export_output_path(small_store, name, fmt):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "own.db").write_bytes(small_store)
        (root / "dir").mkdir()
        (root / "target.csv").write_text("keep")
        (root / "link.csv").symlink_to(root / "target.csv")
        (root / "dangling.csv").symlink_to(root / "nowhere.csv")
        out = Path(name)
        allowed = {str(out), str(out.with_name(f"{out.stem}_curves{out.suffix}"))} \
            if name not in ("", ".", "..") else set()
        allowed |= {str(Path(p)) for p in list(allowed) for p in [Path(p).parent]
                    if str(p) != "."}  # a named output may create its folder
        code, _ = run_case(["store", "export", "own.db", "--format", fmt, "--out", name],
                           root, allowed - {"own.db", "target.csv", "link.csv", "dangling.csv",
                                            "dir"})
        assert (root / "own.db").read_bytes() == small_store
        assert (root / "target.csv").read_text() == "keep"


# ----------------------------------------------------------------------------- subprocess
@pytest.mark.parametrize("argv", [
    ["predict", "el", "-A", "5", "-G", "2", "-C", "1e20"],
    ["design", "--compute", "1e40"],
    ["count", "--seq-len", "-5", "examples/tiny-moe.toml"],
    ["sweep", "run", "nonexistent.toml", "--store", "/dev/null"],
])
def test_subprocess_exit_2_one_line(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "moescale", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr

