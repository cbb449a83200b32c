"""Prediction records behind ``moescale predict``: inputs resolved, law applied, conventions named.

Each function takes either explicit law inputs or a :class:`ModelSpec` plus training
tokens, and returns one JSON-ready dict (the CLI prints it). Inputs from a spec use
:mod:`moescale.spec.accounting`: A = E_a/E, G = 2d/d_expert, C = Ling M(seq_len)·D.
"""

from __future__ import annotations

from typing import Any

from moescale.errors import ConfigError
from moescale.laws.base import LossLaw, check_positive
from moescale.laws.el import ELLaw
from moescale.laws.equivalent import dense_equivalent
from moescale.laws.hparams import AllocationLaw, HyperparameterLaw
from moescale.laws.registry import LOSS_LAWS, get_law
from moescale.spec.accounting import flops_per_token
from moescale.spec.model_spec import ModelSpec

__all__ = [
    "EL_LAWS",
    "el_inputs_from_spec",
    "predict_el",
    "predict_hparams",
    "predict_allocation",
    "loss_inputs",
    "predict_loss",
    "predict_optimum",
]

EL_LAWS = ("ling2025",)
"""Names accepted by ``predict el --law``."""


def el_inputs_from_spec(spec: ModelSpec, tokens: float, *, seq_len: int = 4096) -> dict:
    """``{"activation_ratio", "granularity", "compute", "flops_per_token", "tokens", "seq_len"}``.

    A = E_a/E (routed), G = 2·d/d_expert, C = M·D with M Ling's FLOPs per token.
    A dense spec is a :class:`ConfigError` (EL compares an MoE with dense).
    """
    D = float(check_positive("tokens", tokens))
    if not spec.is_moe:
        raise ConfigError(
            f"the spec {spec.name!r} is dense (n_experts = 0): EL needs an MoE spec"
        )
    m = flops_per_token(spec, convention="ling", seq_len=seq_len)
    return {
        "activation_ratio": spec.activation_ratio,
        "granularity": spec.granularity,
        "compute": m * D,
        "flops_per_token": m,
        "tokens": D,
        "seq_len": seq_len,
        "spec_name": spec.name,
    }


def _el_law(name: str) -> ELLaw:
    if name not in EL_LAWS:
        raise ConfigError(f"'law' must be one of {', '.join(EL_LAWS)}; got {name!r}")
    return get_law(name)


def predict_el(
    A: float, G: float, C: float, *, law: str | ELLaw = "ling2025", tokens: float | None = None,
    inputs: dict | None = None,
) -> dict:
    """The ``moescale predict el`` record.

    Keys: ``el``, ``law``, ``in_fitted_range``, ``range_warnings``, ``notes``, ``inputs``,
    ``exponent``, ``break_even_compute`` (EL = 1 at this G), ``optimal_granularity``,
    ``dense_equivalent`` (see :func:`dense_equivalent`), ``conventions``, ``provenance``.
    """
    el_law = law if isinstance(law, ELLaw) else _el_law(law)
    el = float(el_law.predict(A, G, C))
    report = el_law.check_range(A, G, C)
    even = float(el_law.break_even_compute(G))
    notes = []
    if el_law.coefficients.d < 0 and even > C:
        notes.append(
            f"compute {C:.3g} is below the law's EL = 1 break-even compute {even:.3g} at "
            f"G = {G:g}: "
            "it predicts the MoE worse than dense there (an extrapolation of the fit)"
        )
    record_inputs = {"activation_ratio": float(A), "granularity": float(G), "compute": float(C)}
    if inputs:
        record_inputs.update(inputs)
    return {
        "el": el,
        "law": el_law.name,
        "in_fitted_range": report.inside,
        "range_warnings": list(report.violations),
        "range_unknown": list(report.unknown),
        "notes": notes,
        "inputs": record_inputs,
        "exponent": float(el_law.exponent(G, C)),
        "break_even_compute": even,
        "optimal_granularity": el_law.optimal_granularity(),
        "dense_equivalent": dense_equivalent(A, G, C, tokens=tokens, law=el_law),
        "conventions": dict(el_law.conventions),
        "provenance": el_law.provenance.as_dict(),
    }


def predict_hparams(C: float, *, inputs: dict | None = None) -> dict:
    """``{"learning_rate", "batch_tokens", "compute", ...}`` from [EL] Eq. 3 (MoE)."""
    law = HyperparameterLaw.published()
    rec = law.predict(C)
    seq_len = (inputs or {}).get("seq_len")
    rec.update(
        law=law.name,
        batch_sequences=rec["batch_tokens"] / seq_len if seq_len else None,
        inputs=dict(inputs or {"compute": float(C)}),
        conventions=dict(law.conventions),
        provenance=law.provenance.as_dict(),
    )
    return rec


def predict_allocation(C: float, arch: str) -> dict:
    """``{"arch", "compute", "flops_per_token", "tokens", ...}`` from [EL] Table 1."""
    law = AllocationLaw.published(arch)
    rec = law.predict(C)
    rec.update(law=law.name, flops_convention="ling", provenance=law.provenance.as_dict())
    return rec


def _loss_law(name: str) -> LossLaw:
    if name not in LOSS_LAWS:
        raise ConfigError(f"'law' must be one of {', '.join(LOSS_LAWS)}; got {name!r}")
    return get_law(name)


def _refuse_unused(law: LossLaw, used: Any, **given: float | None) -> None:
    """An option the law does not take is an error, never silently ignored."""
    for name, value in given.items():
        if value is not None and name not in used:
            raise ConfigError(f"{name!r} does not apply to law {law.name!r} (its inputs: "
                              f"{', '.join(used)}); got {value!r}")


def loss_inputs(law: LossLaw, tokens: float, *, params: float | None = None,
                granularity_fg: float | None = None, experts: float | None = None,
                spec: ModelSpec | None = None) -> tuple[dict[str, float], list[str]]:
    """The law's ordered inputs ``{"params", "tokens", ...}`` and notes, from a spec or numbers."""
    D = float(check_positive("tokens", tokens))
    if spec is None:
        inputs = law.inputs_from_args(params, D, granularity_fg=granularity_fg,
                                      experts=experts)
        _refuse_unused(law, inputs, granularity_fg=granularity_fg, experts=experts)
        return inputs, []
    if params is not None or granularity_fg is not None or experts is not None:
        raise ConfigError("give either a config or --params/--granularity-fg/--experts, not both")
    return law.inputs_from_spec(spec, D)


def predict_loss(
    law: str,
    *,
    params: float | None = None,
    tokens: float,
    granularity_fg: float | None = None,
    experts: float | None = None,
    spec: ModelSpec | None = None,
) -> dict:
    """Loss of a loss law (FG, JOINT, Chinchilla/Epoch) at N, D (and G_fg or E).

    N follows the law's convention: FG total non-embedding, JOINT active with
    embeddings, Chinchilla total (dense). With ``spec``, N (and G_fg / E) come from
    the accounting module; giving both ``spec`` and ``params`` is a :class:`ConfigError`.
    """
    obj = _loss_law(law)
    inputs, notes = loss_inputs(obj, tokens, params=params, granularity_fg=granularity_fg,
                                experts=experts, spec=spec)
    values = tuple(inputs.values())
    report = obj.check_range(*values)
    return {
        "loss": float(obj.predict(*values)),
        "law": obj.name,
        **{k: float(v) for k, v in inputs.items()},
        "N_convention": obj.N_CONVENTION,
        "in_fitted_range": report.inside,
        "range_warnings": list(report.violations),
        "range_unknown": list(report.unknown),
        "notes": notes,
        "conventions": dict(obj.conventions),
        "provenance": obj.provenance.as_dict(),
    }


def predict_optimum(law: str, C: float, *, experts: float | None = None) -> dict:
    """Compute-optimal allocation of a loss law at budget C (its own FLOPs convention)."""
    obj = _loss_law(law)
    rec = obj.optimum(float(check_positive("compute", C)), experts=experts)
    _refuse_unused(obj, [k for k in ("compute", "experts") if k in rec], experts=experts)
    rec.update(law=obj.name, provenance=obj.provenance.as_dict())
    return rec
