"""The core install needs no torch: planning commands run with every extra blocked.

Each check is a fresh interpreter whose ``sys.meta_path`` refuses the modules of the
optional extras (torch, matplotlib, pyarrow, tensorboard, transformers, …), so an
import of any of them anywhere on the command's path fails the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.extras import EXTRA_OF

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import sys
BLOCKED = set({blocked!r})
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
sys.meta_path.insert(0, _Block())
"""
BLOCKER = PRELUDE + """
sys.argv = ["moescale", *{argv!r}]
from moescale.cli import main
try:
    main({argv!r})
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("LOADED=" + ",".join(loaded), file=sys.stderr)
"""


def run_blocked(argv: list[str], blocked=tuple(EXTRA_OF), cwd: Path = REPO):
    code = BLOCKER.format(blocked=sorted(blocked), argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )


PLANNING = {
    "predict el": ["predict", "el", "--activation-ratio", "0.03125", "--granularity", "12",
                   "--compute", "1e22", "--json"],
    "predict hparams": ["predict", "hparams", "--compute", "1e20", "--json"],
    "count toml": ["count", str(REPO / "examples/tiny-moe.toml"), "--json"],
    "design": ["design", "--compute", "1e21", "--max-total-params", "3e10", "--top", "1"],
    "version": ["--version"],
    "examples list": ["examples", "list"],
}


@pytest.mark.parametrize("name", sorted(PLANNING))
def test_planning_commands_run_without_any_extra(name):
    proc = run_blocked(PLANNING[name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rstrip().endswith("LOADED=")  # no module of an extra was imported


def test_count_hf_config_without_torch(configs_dir):
    proc = run_blocked(["count", str(configs_dir / "DeepSeek-V3.json"), "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_params"] == 671_026_419_200


def test_core_library_imports_without_extras():
    code = PRELUDE.format(blocked=sorted(EXTRA_OF)) + (
        "import moescale.spec, moescale.laws, moescale.fit, moescale.report\n"
        "from moescale.report import analyze, summary_lines\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_extra_is_one_line_naming_the_extra(tmp_path):
    proc = run_blocked(["train", str(REPO / "examples/tiny-dense.toml"), "--compute", "1e9",
                        "--out", str(tmp_path / "run")], blocked=("torch",))
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first == "error: this command needs torch: pip install 'moescale[train]'"
    assert "Traceback" not in proc.stderr
