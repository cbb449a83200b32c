"""Published scaling laws as objects: a pure form plus a coefficient set with provenance.

Every law is a :class:`Law` holding a :class:`Coefficients` set; each published number
is written once, in its set (``law.formula()`` prints it). Loss laws also follow
:class:`LossLaw` (inputs from a spec, predict, check_range, optimum).

- :class:`ELLaw` — [EL] joint Efficiency Leverage law (arXiv 2507.17702, Eq. 13);
  :func:`published_el`, :func:`el_break_even_compute` (EL = 1).
- :class:`HyperparameterLaw` ([EL] Eq. 3) and :class:`AllocationLaw` ([EL] Table 1).
- :class:`FGLaw` — fine-grained MoE loss (arXiv 2402.07871) and its compute optimum.
- :class:`JointLaw` — joint MoE law (arXiv 2502.05172) with closed-form optimum per E.
- :class:`ChinchillaLaw` — Chinchilla / Epoch coefficient sets (2203.15556, 2404.10102).
- :data:`EQUAL_RESOURCE` — [EQ] activation-rate region (arXiv 2506.12119).
- :func:`dense_equivalent` — the dense model an MoE matches; :func:`get_law` — registry.

Form functions live in :mod:`moescale.laws.forms`; coefficient sets can be built from
a user fit (``ELLaw(coefficients=ELCoefficients(...))``).
"""

from moescale.laws.base import (
    Coefficients,
    FittedRange,
    Interval,
    Law,
    LossLaw,
    Provenance,
    RangeReport,
)
from moescale.laws.chinchilla import ChinchillaCoefficients, ChinchillaLaw
from moescale.laws.el import (
    EL_CONVENTIONS,
    ELCoefficients,
    ELLaw,
    el_break_even_compute,
    published_el,
)
from moescale.laws.equal_resource import EQUAL_RESOURCE, EqualResourceRegion
from moescale.laws.equivalent import dense_equivalent
from moescale.laws.fg import FGCoefficients, FGLaw, FGOptimum, fg_flops_per_token, fg_shape
from moescale.laws.hparams import (
    AllocationCoefficients,
    AllocationLaw,
    HyperparameterCoefficients,
    HyperparameterLaw,
    PowerLaw,
)
from moescale.laws.joint import JointCoefficients, JointLaw, JointLRCoefficients
from moescale.laws.registry import LAWS, get_law, law_names

__all__ = [
    "Coefficients",
    "Law",
    "LossLaw",
    "Provenance",
    "Interval",
    "FittedRange",
    "RangeReport",
    "ELCoefficients",
    "ELLaw",
    "EL_CONVENTIONS",
    "published_el",
    "el_break_even_compute",
    "PowerLaw",
    "HyperparameterCoefficients",
    "HyperparameterLaw",
    "AllocationCoefficients",
    "AllocationLaw",
    "FGCoefficients",
    "FGLaw",
    "FGOptimum",
    "fg_shape",
    "fg_flops_per_token",
    "JointCoefficients",
    "JointLRCoefficients",
    "JointLaw",
    "ChinchillaCoefficients",
    "ChinchillaLaw",
    "EqualResourceRegion",
    "EQUAL_RESOURCE",
    "dense_equivalent",
    "LAWS",
    "get_law",
    "law_names",
]
