"""Benchmark: wall time of ``moescale demo --quick`` and of a rerun that reuses its store.

The end-to-end test (tests/test_demo.py) checks what the demo produces; the time it
takes is measured here, against the budgets the README promises: the first run
(train 10 small models, fit, report) within ``--first-budget`` seconds and the rerun
(every run reused) within ``--rerun-budget``. Exits 1 when a budget is exceeded.
Run: ``.venv/bin/python benchmarks/bench_demo.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_demo(out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moescale", "demo", "--quick", "--out", str(out)],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first-budget", type=float, default=240.0)
    ap.add_argument("--rerun-budget", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        first = timed_demo(out)
        rerun = timed_demo(out)
    ok = True
    for name, took, budget in (("demo --quick", first, args.first_budget),
                               ("rerun (store reused)", rerun, args.rerun_budget)):
        within = took <= budget
        ok &= within
        print(f"{name:22s} {took:7.1f} s   budget {budget:g} s   {'ok' if within else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
