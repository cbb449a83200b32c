"""Benchmark: wall time of planning commands against a bare interpreter start.

Runs ``python -c pass``, ``moescale predict el …`` and ``moescale count CONFIG`` as fresh
processes (the way a user types them) and reports the median wall time of each and its
excess over ``python -c pass``. The planning commands need no torch; whether torch is
imported is printed too (``-X importtime``). Run: ``.venv/bin/python
benchmarks/bench_cli_startup.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "moescale predict el": ["-m", "moescale", "predict", "el", "--activation-ratio", "0.03125",
                            "--granularity", "12", "--compute", "1e22"],
    "moescale count CONFIG": ["-m", "moescale", "count", str(REPO / "examples/tiny-moe.toml")],
}


def wall_time(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def imports_torch(args: list[str], env: dict[str, str]) -> bool:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], env=env,
                          check=True, capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == "torch" for line in proc.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    base = None
    print(f"CLI start-up, median of {args.repeats} fresh processes ({sys.executable}):")
    for label, argv in COMMANDS.items():
        wall_time(argv, env)  # warm the OS file cache
        median = statistics.median(wall_time(argv, env) for _ in range(args.repeats))
        base = median if base is None else base
        extra = "" if label == "python -c pass" else (
            f"  (+{median - base:.3f} s over python -c pass; imports torch: "
            f"{imports_torch(argv, env)})")
        print(f"  {label:24s} {median:6.3f} s{extra}")


if __name__ == "__main__":
    main()
