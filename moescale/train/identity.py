"""Run identity: which (spec, train config) a run folder or a sweep-store row belongs to.

One definition serves the planner (store keys) and the trainer (refusing to resume a
folder of another run). The identity holds the spec's fields and the train config's
fields that change the numbers a run produces, **each only where it differs from its
dataclass default**: a field added to moescale later, at its default, leaves every
existing identity — and so every store key and every interrupted run — unchanged.

Left out: the spec's ``name``/``extra`` and the config's provenance (``extra``),
checkpoint cadence and token-cache folder (none changes a number).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from moescale.spec.model_spec import ModelSpec
from moescale.train.config import TrainConfig, upgrade_train_dict

__all__ = ["run_identity", "run_hash", "identity_diff", "upgrade_identity"]

_SPEC_SKIP = frozenset({"name", "extra"})
_TRAIN_SKIP = frozenset({"checkpoint_every_s", "checkpoint_every_steps", "extra", "cache_dir"})
_MISSING = object()


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples -> lists, dataclasses -> dicts), for comparison."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def _non_default(values: dict[str, Any], cls: type, skip: frozenset[str] = frozenset()):
    """``values`` without ``skip`` and without entries equal to ``cls``'s defaults; nested
    dataclass fields (``TrainConfig.moe``) are reduced the same way, and dropped if empty."""
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if name in skip:
            continue
        f = fields.get(name)
        default = _default(f) if f is not None else _MISSING
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _non_default(value, type(default))
            if value:
                out[name] = value
            continue
        if default is _MISSING or _plain(default) != value:
            out[name] = value
    return out


def run_identity(spec: ModelSpec, config: TrainConfig) -> dict[str, Any]:
    """``{"spec": {...}, "train": {...}}``: the non-default fields that define the run.

    >>> spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=257, d_ffn=64)
    >>> run_identity(spec, TrainConfig(compute=1e9, seed=1))["train"]
    {'compute': 1000000000.0, 'seed': 1}
    """
    spec_d = _plain(spec.to_dict())
    train_d = _plain(config.to_dict())
    return {
        "spec": _non_default(spec_d, type(spec), _SPEC_SKIP),
        "train": _non_default(train_d, type(config), _TRAIN_SKIP),
    }


def run_hash(spec: ModelSpec, config: TrainConfig) -> str:
    """16 hex digits of SHA-256 over :func:`run_identity` (the sweep store's run key)."""
    blob = json.dumps(run_identity(spec, config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def upgrade_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """An identity read from a run folder, in today's form.

    Schema-1 folders stored every field (defaults included) and flat MoE keys; both are
    normalised here, so an old interrupted run resumes under this version.
    """
    spec_d = stored.get("spec", {}) if isinstance(stored, dict) else {}
    train_d = stored.get("train", {}) if isinstance(stored, dict) else {}
    train_d = upgrade_train_dict(train_d, warn=False)
    return {
        "spec": _non_default(_plain(spec_d), ModelSpec, _SPEC_SKIP),
        "train": _non_default(_plain(train_d), TrainConfig, _TRAIN_SKIP),
    }


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable differences ``"train.seed: 0 -> 1"`` between two identities (a field absent
    from one side is at its default there)."""
    out = []
    for part in ("spec", "train"):
        a, b = old.get(part, {}), new.get(part, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{part}.{k}: {_shown(a, k)} -> {_shown(b, k)}")
    return out


def _shown(d: dict[str, Any], key: str) -> str:
    return repr(d[key]) if key in d else "(default)"
