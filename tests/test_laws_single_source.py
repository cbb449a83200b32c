"""Every published coefficient is written once, in moescale/laws/ (issue 13).

The numbers are read from the coefficient objects themselves (every law of the
registry), so a new coefficient set is covered without editing this test. Each
source file outside ``moescale/laws/`` is scanned for numeric literals, in code,
strings and comments alike; one that equals a published coefficient is a copy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import moescale
from moescale.laws import EQUAL_RESOURCE, Coefficients

PKG = Path(moescale.__file__).parent
NUMBER = re.compile(r"(?<![\w.])\d[\d_]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def _significant_digits(x: float) -> int:
    mantissa = f"{abs(x):.15e}".split("e")[0].replace(".", "").rstrip("0")
    return len(mantissa)


def _coefficient_sets():
    """``(owner, {name: value})`` of every registered set and of the [EQ] region."""
    todo = [Coefficients]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        for set_name, coefficients in cls.SETS.items():
            yield f"{cls.__name__}[{set_name}]", coefficients.params()
    yield "EQUAL_RESOURCE", {"low": EQUAL_RESOURCE.low, "high": EQUAL_RESOURCE.high,
                             "optimum": EQUAL_RESOURCE.optimum,
                             "data_multiplier": EQUAL_RESOURCE.data_multiplier}


def published_numbers() -> dict[float, str]:
    """``{|value|: "Set[name].field"}`` for every distinctive published coefficient.

    Distinctive: at least 3 significant digits (0.47 or 64 also occur for unrelated
    reasons; 0.0655, 1.1576 or 5.28e16 do not).
    """
    out = {}
    for owner, params in _coefficient_sets():
        for key, v in params.items():
            v = abs(v)
            if _significant_digits(v) >= 3:
                out[v] = f"{owner}.{key}"
    return out


def _literals(text: str):
    for m in NUMBER.finditer(text):
        try:
            yield m, float(m.group().replace("_", ""))
        except ValueError:
            continue


def test_published_numbers_cover_every_coefficient_set() -> None:
    nums = published_numbers()
    # one distinctive number of each family, as the coefficient objects give them
    for owner in ("ELCoefficients[ling2025].a",
                  "HyperparameterCoefficients[ling2025].lr_coefficient",
                  "AllocationCoefficients[dense].m", "AllocationCoefficients[moe].n",
                  "FGCoefficients[moe_e64].a", "JointCoefficients[joint].E_max",
                  "JointLRCoefficients[joint].intercept", "ChinchillaCoefficients[chinchilla].A",
                  "ChinchillaCoefficients[epoch-huber].B"):
        assert owner in nums.values(), owner
    assert len(nums) > 40


def test_no_published_coefficient_outside_laws() -> None:
    nums = published_numbers()
    hits = []
    files = [p for ext in ("*.py", "*.toml") for p in PKG.rglob(ext)]
    for path in sorted(files):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "laws":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for m, v in _literals(line):
                for pub, owner in nums.items():
                    if math.isclose(v, pub, rel_tol=1e-12):
                        hits.append(f"{rel}:{i}: {m.group()} ({owner})")
    assert not hits, "published coefficients written outside moescale/laws/ " \
        "(ask the law, e.g. law.formula()):\n" + "\n".join(hits)


@pytest.mark.parametrize("text", ["lr = 1.1576·C^-0.1529", "M_opt = 0.0655*C**0.5422",
                                  "A_max=5.28e16", "x = 157_184 + 7.61e-2"])
def test_the_scan_finds_a_copied_literal(text: str) -> None:
    nums = published_numbers()
    found = [v for _, v in _literals(text) if any(math.isclose(v, p) for p in nums)]
    assert found, text
