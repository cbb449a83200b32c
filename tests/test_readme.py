"""The README's worked examples and the commands of ``docs/*.md`` run as written.

Every shell command of a fenced ``bash``/``console``/``sh`` block is extracted and run in
one scratch folder, in document order (README first, then ``docs/`` alphabetically), with
the package of this checkout. A command must exit 0, and for ``console`` blocks every
output line the document shows (``...`` elides) must appear in what the command prints,
compared after dropping table rules and collapsing spaces (rich pads to the terminal).

The scratch folder holds what the documents assume: ``examples/`` (the repository's),
and the files the README names from the project's ``../shared`` folder
(``DeepSeek-V3.json``, the two CSVs). Commands are substituted only where
:data:`SUBSTITUTIONS` says so, each with its reason; ``None`` means not run here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = ("bash", "console", "sh", "shell")

# One dense run at 3e9 FLOPs: stands in for examples/sweeps/demo.toml (121 runs, 17 min).
README_SWEEP = """\
[sweep]
name = "readme"
budgets = [3e9]
seq_len = 64
tokenizer = "byte"
vocab_size = 257

[shape]
d_model = [16, 24, 32]
n_layers = [1, 2]
head_dim = 8
aspect = 16

[train]
batch_tokens = 2048
n_evals = 2
eval_batches = 2

[dense]
sizes = [1.0]
"""

TINY_TRAIN = "2e10 FLOPs instead of 1e12: the same spec and code path in 2 optimizer steps"
DDP = "DDP through torchrun is exercised by tests/test_train_ddp.py (gloo, 2 processes)"
SUBSTITUTIONS: dict[str, tuple[list[str] | None, str]] = {
    "make demo": (None, "creates .venv/ and runs the 17-min demo; tests/test_demo.py runs "
                        "`moescale demo --quick`, the same code"),
    "make test": (None, "the test suite itself"),
    "moescale train examples/tiny-moe.toml --compute 1e12 --out runs/tiny-moe": (
        ["moescale train examples/tiny-moe.toml --compute 2e10 --out runs/tiny-moe"], TINY_TRAIN),
    "moescale train examples/tiny-dense.toml --compute 1e12 --out runs/tiny-dense": (
        ["moescale train examples/tiny-dense.toml --compute 2e10 --out runs/tiny-dense"],
        TINY_TRAIN),
    "torchrun --nproc-per-node 2 -m moescale.cli train examples/tiny-moe.toml --compute 1e12 "
    "--out runs/ddp": (None, DDP),
    "torchrun --nproc-per-node 2 -m moescale.cli train examples/tiny-dense.toml --compute 2e10 "
    "--out runs/tiny2": (None, DDP),
    "moescale sweep run  examples/sweeps/demo.toml --store sweep.db [--workers N]": (
        ["moescale sweep run readme_sweep.toml --store sweep.db --workers 1"],
        "a one-run sweep (README_SWEEP) instead of the demo's 121 runs; [--workers N] → 1"),
    "moescale sweep run  examples/sweeps/demo.toml --store sweep.db --backend ray "
    "[--ray-address HOST:PORT]": (
        None, "starts a Ray cluster; the Ray executor is tested in tests/test_sweep_execute.py"),
    "moescale store export sweep.db --format csv|parquet [--out runs.csv]": (
        ["moescale store export sweep.db --format csv --out runs.csv",
         "moescale store export sweep.db --format parquet --out runs.parquet"],
        "both formats of the synopsis"),
    "moescale demo [--quick] [--out moescale_demo/]": (
        None, "tests/test_demo.py runs `moescale demo --quick`"),
    "moescale bench train --json": (
        ["moescale bench train --json --steps 2 --rounds 1 --micro-batch 4 --seq-len 64"],
        "a smaller measurement (the default times 4 rounds of 12 steps of 32×256 tokens)"),
    "moescale bench train --moe --json": (
        ["moescale bench train --moe --json --steps 2 --rounds 1 --micro-batch 4 --seq-len 64"],
        "a smaller measurement (as above)"),
}


@dataclass(frozen=True)
class Command:
    where: str  # "README.md:155"
    text: str
    expected: tuple[str, ...]  # output lines shown by a console block


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip()


def extract(path: Path) -> list[Command]:
    """Shell commands of ``path``'s fenced shell blocks, with the output a console block
    shows after each ``$ `` line."""
    commands: list[Command] = []
    lang, cur, start, out = None, None, 0, []
    lines = path.read_text().splitlines()

    def flush():
        if cur is not None:
            commands.append(Command(f"{path.relative_to(REPO)}:{start}", cur, tuple(out)))

    for no, line in enumerate(lines, 1):
        fence = re.match(r"^```(\w*)", line)
        if fence and lang is None:
            lang = fence.group(1) or "text"
            continue
        if fence:
            flush()
            lang, cur, out = None, None, []
            continue
        if lang not in SHELL_BLOCKS:
            continue
        if lang == "console":
            if line.startswith("$ "):
                flush()
                cur, start, out = _strip_comment(line[2:]), no, []
            elif cur is not None and line.strip() and line.strip() != "...":
                out.append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            cur, start, out = _strip_comment(line), no, []
            flush()
            cur = None
    return commands


ALL = [c for doc in DOCUMENTS for c in extract(doc)]


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[│┃┌┐└┘├┤┬┴┼─━┏┓┗┛┡┩╇╈┣┫]", " ", text).split())


def test_every_placeholder_or_costly_command_is_substituted_on_purpose():
    """Synopsis placeholders ([...], a|b) cannot run: each such command has an entry, and
    no entry is stale (its command still appears in a document)."""
    texts = {c.text for c in ALL}
    for c in ALL:
        if re.search(r"\[|\||<", c.text) or not c.text.startswith("moescale "):
            assert c.text in SUBSTITUTIONS, f"{c.where}: {c.text!r} needs a substitution"
    stale = sorted(set(SUBSTITUTIONS) - texts)
    assert not stale, f"substitutions for commands no document has: {stale}"
    assert any(c.expected for c in ALL)  # the console blocks were found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, token_cache, shared_dir):
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", work / "examples")
    for rel in ("configs/DeepSeek-V3.json", "data/chinchilla_svg_extracted_data.csv",
                "data/clark2022_routed_moe_runs_sldbench.csv"):
        (work / Path(rel).name).symlink_to(shared_dir / rel)
    (work / "readme_sweep.toml").write_text(README_SWEEP)
    return work


def _argv(text: str) -> list[str]:
    words = text.split()
    assert words[0] == "moescale", text
    return [sys.executable, "-m", "moescale", *words[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("command", ALL, ids=[c.where for c in ALL])
def test_documented_command_runs(command: Command, workdir: Path, token_cache: str):
    replacement, _reason = SUBSTITUTIONS.get(command.text, ([command.text], ""))
    if replacement is None:
        pytest.skip(_reason)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOESCALE_CACHE": token_cache,
           "COLUMNS": "200", "NO_COLOR": "1"}
    printed = []
    for text in replacement:
        proc = subprocess.run(_argv(text), cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command.where}: {text}\n{proc.stderr[-3000:]}"
        printed.append(proc.stdout + proc.stderr)
    shown = _normal("\n".join(printed))
    missing = [line for line in command.expected if _normal(line) not in shown]
    assert not missing, f"{command.where}: output lacks {missing}\n{printed[-1][-3000:]}"
