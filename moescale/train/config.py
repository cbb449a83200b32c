"""Training configuration: what a user sets (:class:`TrainConfig`) and what it resolves to.

A run trains a :class:`~moescale.spec.ModelSpec` to a compute budget ``C`` in
FLOPs, counted with [EL]'s convention ``C = M·D`` (arXiv 2507.17702, App. C):
``M`` is Ling's non-embedding training FLOPs per token at the run's sequence
length (:func:`moescale.spec.flops_per_token`, ``convention="ling"``; attention
at full ``s``, no causal halving) and ``D`` the training tokens.

Unset hyperparameters come from [EL] Eq. 3 (fitted on MoE runs, C in FLOPs): the
peak learning rate and the batch in tokens of :class:`moescale.laws.HyperparameterLaw`.
:func:`resolve_plan` turns a config into a :class:`TrainPlan` (steps, batch in
whole sequences, micro-batches, learning rate), recording every clamp it made.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from moescale.errors import ConfigError, check_keys, check_range
from moescale.model.config import MoEConfig
from moescale.spec.accounting import flops_per_token
from moescale.spec.model_spec import ModelSpec

__all__ = [
    "TRAIN_SCHEMA_VERSION",
    "TrainConfig",
    "TrainPlan",
    "resolve_plan",
    "el_lr_opt",
    "el_batch_opt",
    "load_run_config",
    "upgrade_train_dict",
]

TRAIN_SCHEMA_VERSION = 2
"""Version of the run records a run folder holds (``moescale_run.json``, ``result.json``).
2: MoE options nested in ``TrainConfig.moe`` (``[train.moe]``); run identity drops
fields at their defaults; the final evaluation's statistics in ``result.json``."""

MICRO_BATCH_TOKENS = 16384
"""Default upper bound on tokens per micro-batch (per rank) when ``micro_batch_size`` is
unset, on CPU: large enough for efficient GEMMs, small enough for activations of small
models. On a GPU the trainer raises it to what fits in half the free device memory
(:func:`moescale.train.resources.fitting_micro_batch_tokens`): small models there are
bound by kernel launches, so micro-batches of 16k tokens would multiply the step time."""


def el_lr_opt(compute: float) -> float:
    """[EL] Eq. 3 peak learning rate (C in FLOPs, Ling M convention),
    from :meth:`moescale.laws.HyperparameterLaw.published`.

    >>> round(el_lr_opt(1e20), 6)
    0.001013
    """
    from moescale.laws import HyperparameterLaw

    return float(HyperparameterLaw.published().learning_rate(compute))


def el_batch_opt(compute: float) -> float:
    """[EL] Eq. 3 batch size in tokens (C in FLOPs), from ``HyperparameterLaw``.

    >>> round(el_batch_opt(1e20) / 1e6, 2)
    1.35
    """
    from moescale.laws import HyperparameterLaw

    return float(HyperparameterLaw.published().batch_tokens(compute))


Schedule = Literal["wsd", "cosine"]
_SCHEDULES = ("wsd", "cosine")
_DTYPES = ("auto", "float32", "bfloat16")
_TOKENIZERS = ("byte", "bpe")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run besides the architecture.

    Examples
    --------
    >>> cfg = TrainConfig(compute=2e9, seq_len=64)
    >>> cfg.schedule, cfg.weight_decay
    ('wsd', 0.1)
    """

    compute: float
    """Compute budget C in FLOPs ([EL] C = M·D, Ling M at ``seq_len``)."""
    seq_len: int = 256
    """Training sequence length s (also the s in Ling's attention term of M)."""
    learning_rate: float | None = None
    """Peak learning rate; ``None`` → [EL] Eq. 3 (:func:`el_lr_opt`)."""
    batch_tokens: int | None = None
    """Global batch in tokens; ``None`` → [EL] Eq. 3 (:func:`el_batch_opt`). Rounded to whole
    sequences (at least one, and a multiple of the number of ranks)."""
    lr_law: tuple[float, float] | None = None
    """``(coefficient, exponent)`` of a peak-LR power law ``a·C^b`` to use instead of [EL]
    Eq. 3 when ``learning_rate`` is unset (e.g. a law fitted on your own runs)."""
    batch_law: tuple[float, float] | None = None
    """``(coefficient, exponent)`` of a batch-tokens power law used instead of Eq. 3."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass per rank (gradient accumulation reaches the batch);
    ``None`` → the largest divisor of the per-rank batch with at most 16384 tokens (on a GPU:
    what fits in half its memory), or near-equal micro-batches where no divisor reaches
    half of that (see :func:`resolve_plan`)."""
    schedule: Schedule = "wsd"
    """``wsd`` (warm-up, stable, decay; [EL] recipe) or ``cosine`` (warm-up then cosine)."""
    warmup_fraction: float = 0.01
    """Fraction of steps of linear warm-up from 0 ([EL]: 1%)."""
    decay_fraction: float = 0.1
    """WSD: final fraction of steps decaying linearly to ``min_lr_ratio``·peak. [EL] does not
    print its decay length; 10% is the common WSD choice (MiniCPM, arXiv 2404.06395)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak ([EL]: decay to 10% of peak)."""
    beta1: float = 0.9
    """AdamW β1 ([EL])."""
    beta2: float = 0.95
    """AdamW β2 ([EL])."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay ([EL]) on every tensor with >= 2 dims (matrices, expert
    weights, embeddings); norms and biases get none (nanoGPT's grouping)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    init_std: float = 0.006
    """Initial weight standard deviation ([EL])."""
    eval_every: float | None = None
    """Evaluate validation loss every this many FLOPs; ``None`` → ``C / n_evals``."""
    n_evals: int = 10
    """Number of evaluations over the run when ``eval_every`` is unset (the end always is one)."""
    eval_batches: int = 8
    """Micro-batches of validation data per periodic evaluation (same ones every time; the
    ``val_loss`` curve of ``metrics.jsonl``)."""
    eval_tokens: int | None = 65536
    """Final evaluation (``loss`` of the run record): at most this many validation tokens,
    spread evenly over the validation documents; ``None`` → the whole validation split."""
    eval_block_tokens: int = 2048
    """Tokens per final-evaluation block (rounded to whole sequences); the record keeps each
    block's mean loss (``eval_block_losses``) and their standard error (``val_loss_se``)."""
    log_every: int = 10
    """Write a ``metrics.jsonl`` line every this many optimizer steps (and at eval steps)."""
    checkpoint_every_s: float | None = 300.0
    """Checkpoint at the first step boundary after this many seconds (``None``: off)."""
    checkpoint_every_steps: int | None = None
    """Also checkpoint every this many steps (``None``: off)."""
    seed: int = 0
    """Seed of initialisation and of the data order (batches are a function of seed, step)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: str = "auto"
    """``float32`` or ``bfloat16`` (autocast, CUDA only); ``auto`` → bf16 on CUDA, fp32 on CPU."""
    compile: bool | None = None
    """``torch.compile`` the model; ``None`` → on for CUDA, off on CPU."""
    fsdp: bool = False
    """On CUDA with several ranks, shard with FSDP2 ``fully_shard`` instead of DDP."""
    threads: int | None = None
    """CPU threads per rank; ``None`` → cores / local ranks. Fixed for reproducibility."""
    deterministic: bool | None = None
    """``torch.use_deterministic_algorithms`` (bit-identical resume); ``None`` → on for CPU,
    off for CUDA (where deterministic kernels cost speed)."""
    max_loss: float | None = None
    """Divergence threshold on the train loss; ``None`` → 2·ln(V) (twice the loss of a
    uniform prediction). NaN/inf always stops the run."""
    corpus: str | None = None
    """Corpus path (folder of text files, .jsonl, .parquet, HF dataset on disk) or ``None``
    for the default offline corpus of :mod:`moescale.data`."""
    text_column: str = "text"
    """Text column of JSONL/Parquet/HF corpora."""
    tokenizer: str = "byte"
    """``byte`` (256 bytes + end-of-document = 257 ids), ``bpe`` (byte-level BPE trained
    locally with ``tokenizers``, vocabulary = the spec's ``vocab_size``), ``bpe:<vocab>``,
    or a tokenizer JSON file."""
    val_fraction: float = 0.01
    """Least validation share of the corpus bytes (document-level split of
    :mod:`moescale.data`)."""
    val_min_docs: int = 30
    """Least number of validation documents (files of the default corpus), as far as half
    the corpus allows: no single document dominates the validation loss."""
    cache_dir: str | None = None
    """Token cache folder; ``None`` → the data package's default."""
    epochs: float = 1.0
    """Most passes over the training split the run may make; >1 repeats data explicitly."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Routing and balancing recipe of the MoE layers (``[train.moe]`` in TOML; a dict is
    accepted): [EL] softmax top-k with aux loss 0.01 and z-loss 0.001 by default. Unused by
    dense specs. See :class:`~moescale.model.config.MoEConfig`."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form provenance (e.g. sweep id); recorded, never used."""

    def __post_init__(self) -> None:
        check_range("compute", self.compute, low=0, low_inclusive=False)
        check_range("seq_len", self.seq_len, low=1, integer=True)
        if self.learning_rate is not None:
            check_range("learning_rate", self.learning_rate, low=0, low_inclusive=False)
        if self.batch_tokens is not None:
            check_range("batch_tokens", self.batch_tokens, low=1, integer=True)
        for name in ("lr_law", "batch_law"):
            law = getattr(self, name)
            if law is None:
                continue
            if not isinstance(law, (tuple, list)) or len(law) != 2:
                raise ConfigError(f"{name!r} must be (coefficient, exponent); got {law!r}")
            check_range(f"{name}[0] (coefficient)", law[0], low=0, low_inclusive=False)
            check_range(f"{name}[1] (exponent)", law[1])
            object.__setattr__(self, name, (float(law[0]), float(law[1])))
        if self.micro_batch_size is not None:
            check_range("micro_batch_size", self.micro_batch_size, low=1, integer=True)
        _choice("schedule", self.schedule, _SCHEDULES)
        check_range("warmup_fraction", self.warmup_fraction, low=0, high=1)
        check_range("decay_fraction", self.decay_fraction, low=0, high=1)
        if self.warmup_fraction + (self.decay_fraction if self.schedule == "wsd" else 0) > 1:
            raise ConfigError(
                "'warmup_fraction' + 'decay_fraction' must be <= 1; got "
                f"{self.warmup_fraction} + {self.decay_fraction}"
            )
        check_range("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_range("beta1", self.beta1, low=0, high=1, high_inclusive=False)
        check_range("beta2", self.beta2, low=0, high=1, high_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0)
        check_range("grad_clip", self.grad_clip, low=0)
        check_range("init_std", self.init_std, low=0, low_inclusive=False)
        if self.eval_every is not None:
            check_range("eval_every", self.eval_every, low=0, low_inclusive=False)
        check_range("n_evals", self.n_evals, low=1, integer=True)
        check_range("eval_batches", self.eval_batches, low=1, integer=True)
        if self.eval_tokens is not None:
            check_range("eval_tokens", self.eval_tokens, low=1, integer=True)
        check_range("eval_block_tokens", self.eval_block_tokens, low=1, integer=True)
        check_range("log_every", self.log_every, low=1, integer=True)
        if self.checkpoint_every_s is not None:
            check_range("checkpoint_every_s", self.checkpoint_every_s, low=0)
        if self.checkpoint_every_steps is not None:
            check_range("checkpoint_every_steps", self.checkpoint_every_steps, low=1, integer=True)
        check_range("seed", self.seed, low=0, integer=True)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"'device' must be one of auto, cpu, cuda, cuda:N; got {self.device!r}"
            )
        _choice("dtype", self.dtype, _DTYPES)
        if self.threads is not None:
            check_range("threads", self.threads, low=1, integer=True)
        if self.max_loss is not None:
            check_range("max_loss", self.max_loss, low=0, low_inclusive=False)
        if not isinstance(self.tokenizer, str) or not (
            self.tokenizer in _TOKENIZERS
            or self.tokenizer.startswith("bpe:")
            or self.tokenizer.endswith(".json")
        ):
            raise ConfigError(
                "'tokenizer' must be one of byte, bpe, bpe:<vocab>, <file>.json; "
                f"got {self.tokenizer!r}"
            )
        check_range("val_fraction", self.val_fraction, low=0, high=0.5, low_inclusive=False)
        check_range("val_min_docs", self.val_min_docs, low=1, integer=True)
        check_range("epochs", self.epochs, low=0, low_inclusive=False)
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoEConfig.from_dict(self.moe))
        elif not isinstance(self.moe, MoEConfig):
            raise ConfigError(f"'moe' must be a table of MoE options; got {self.moe!r}")

    # ------------------------------------------------------------------ records
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a ``[train]`` TOML table); unknown keys raise ConfigError.

        Schema-1 flat MoE keys (``router``, ``moe_backend``, ...) are moved into ``moe``
        with a :class:`FutureWarning` (:func:`upgrade_train_dict`).
        """
        data = upgrade_train_dict(data)
        check_keys(data, (f.name for f in dataclasses.fields(cls)), "train option")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid train config: {exc}") from None


LEGACY_MOE_KEYS: dict[str, str] = {
    "router": "router",
    "routed_scaling": "routed_scaling",
    "aux_loss_coef": "aux_loss_coef",
    "z_loss_coef": "z_loss_coef",
    "aux_free_bias_rate": "aux_free_bias_rate",
    "capacity_factor": "capacity_factor",
    "moe_backend": "backend",
}
"""Schema-1 flat ``[train]`` keys and the :class:`MoEConfig` field each became in schema 2."""


def upgrade_train_dict(data: dict[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """Move schema-1 flat MoE keys of a ``[train]`` dict into its ``moe`` table.

    ``warn`` emits a :class:`FutureWarning` naming the moved keys (user files); records
    that moescale wrote itself are upgraded silently. A key given both ways with different
    values is a :class:`ConfigError`.

    >>> upgrade_train_dict({"compute": 1e9, "moe_backend": "loop"}, warn=False)
    {'compute': 1000000000.0, 'moe': {'backend': 'loop'}}
    """
    legacy = [k for k in LEGACY_MOE_KEYS if k in data]
    if not legacy:
        return dict(data)
    out = {k: v for k, v in data.items() if k not in LEGACY_MOE_KEYS}
    nested = out.get("moe", {})
    if isinstance(nested, MoEConfig):
        nested = dataclasses.asdict(nested)
    if not isinstance(nested, dict):
        raise ConfigError(f"'moe' must be a table of MoE options; got {nested!r}")
    nested = dict(nested)
    for k in legacy:
        new = LEGACY_MOE_KEYS[k]
        if new in nested and nested[new] != data[k]:
            raise ConfigError(
                f"train option {k!r} = {data[k]!r} conflicts with moe.{new} = {nested[new]!r}; "
                "keep only [train.moe]"
            )
        nested[new] = data[k]
    out["moe"] = nested
    if warn:
        moved = ", ".join(f"{k} -> moe.{LEGACY_MOE_KEYS[k]}" for k in legacy)
        warnings.warn(
            f"train config schema {TRAIN_SCHEMA_VERSION}: MoE options live in [train.moe]; "
            f"upgraded the flat key(s) {moved}. Move them under [train.moe] to silence this.",
            FutureWarning,
            stacklevel=3,
        )
    return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name!r} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainPlan:
    """A :class:`TrainConfig` resolved against a spec and a number of ranks."""

    flops_per_token: float
    """Ling M at ``seq_len`` (training, non-embedding)."""
    seq_len: int
    batch_size: int
    """Global batch in sequences."""
    batch_tokens: int
    """Global batch in tokens (``batch_size·seq_len``)."""
    micro_batch_size: int
    """Sequences per forward/backward per rank (the last micro-batch of a step may hold
    fewer: ``grad_accum`` micro-batches of at most this many cover the per-rank batch)."""
    grad_accum: int
    """Micro-batches per optimizer step per rank."""
    world_size: int
    n_steps: int
    """Optimizer steps; ``n_steps·batch_tokens·M`` is within half a batch of C."""
    tokens: int
    """Training tokens D = n_steps·batch_tokens."""
    flops: float
    """Training compute M·D actually spent."""
    learning_rate: float
    eval_every_steps: int
    """Steps between evaluations (the final step is always evaluated)."""
    notes: tuple[str, ...] = ()
    """Clamps and roundings made while resolving (also written to the run record)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["notes"] = list(self.notes)
        return out


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for k in range(min(n, max(cap, 1)), 0, -1):
        if n % k == 0:
            return k
    return 1


def resolve_plan(spec: ModelSpec, config: TrainConfig, world_size: int = 1, *,
                 micro_batch_tokens: int = MICRO_BATCH_TOKENS) -> TrainPlan:
    """Resolve batch, steps and learning rate for ``spec`` at ``config.compute``.

    Without ``config.micro_batch_size`` the micro-batch is the largest divisor of the
    per-rank batch of at most ``micro_batch_tokens`` tokens (one sequence at least). Where
    that divisor is under half the cap (a per-rank batch of 79 sequences under a 64-sequence
    cap has only 1), the batch is cut into the fewest near-equal micro-batches under the
    cap instead (40 and 39), each weighted by its rows (:func:`~moescale.train.step.train_step`).

    Steps are ``round(D / B)`` (at least 1) with ``D = C / M``, so the compute
    spent, ``steps·B·M``, is within half a batch of C.

    Examples
    --------
    >>> spec = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=256, d_ffn=64)
    >>> plan = resolve_plan(spec, TrainConfig(compute=1e9, seq_len=32, batch_tokens=256))
    >>> plan.batch_size, abs(plan.flops - 1e9) <= plan.batch_tokens * plan.flops_per_token
    (8, True)
    """
    check_range("world_size", world_size, low=1, integer=True)
    notes: list[str] = []
    s = config.seq_len
    m = flops_per_token(spec, convention="ling", seq_len=s)
    c = float(config.compute)
    if config.batch_tokens is None:
        if config.batch_law is not None:
            b_law = config.batch_law[0] * c ** config.batch_law[1]
        else:
            b_law = el_batch_opt(c)
        n_seq = max(1, round(b_law / s))
        if b_law < s:
            notes.append(
                f"batch law gives {b_law:.1f} tokens < seq_len {s}: clamped to one sequence"
            )
    else:
        n_seq = max(1, round(config.batch_tokens / s))
        if n_seq * s != config.batch_tokens:
            notes.append(f"batch_tokens {config.batch_tokens} rounded to {n_seq * s} (whole seqs)")
    if n_seq % world_size:
        rounded = max(world_size, round(n_seq / world_size) * world_size)
        notes.append(f"batch of {n_seq} sequences rounded to {rounded} ({world_size} ranks)")
        n_seq = rounded
    per_rank = n_seq // world_size
    if config.micro_batch_size is None:
        cap = max(1, micro_batch_tokens // s)
        micro = _largest_divisor_at_most(per_rank, cap)
        if per_rank > cap and 2 * micro <= cap:
            chunks = -(-per_rank // cap)
            even = micro
            micro = -(-per_rank // chunks)
            notes.append(
                f"{chunks} micro-batches of at most {micro} sequences, the last "
                f"{per_rank - micro * (chunks - 1)}: the per-rank batch of {per_rank} "
                f"sequences has no divisor between {even + 1} and {cap}"
            )
    else:
        micro = _largest_divisor_at_most(per_rank, config.micro_batch_size)
        if micro != config.micro_batch_size:
            notes.append(
                f"micro_batch_size {config.micro_batch_size} -> {micro} "
                f"(must divide the per-rank batch of {per_rank} sequences)"
            )
    batch_tokens = n_seq * s
    tokens_wanted = c / m
    n_steps = max(1, round(tokens_wanted / batch_tokens))
    if tokens_wanted < batch_tokens / 2:
        notes.append(
            f"compute {c:.3g} is less than half a batch ({batch_tokens * m:.3g} FLOPs): one step"
        )
    if config.learning_rate is not None:
        lr = config.learning_rate
    elif config.lr_law is not None:
        lr = config.lr_law[0] * c ** config.lr_law[1]
    else:
        lr = el_lr_opt(c)
    eval_flops = config.eval_every if config.eval_every is not None else c / config.n_evals
    eval_steps = max(1, round(eval_flops / (batch_tokens * m)))
    return TrainPlan(
        flops_per_token=m,
        seq_len=s,
        batch_size=n_seq,
        batch_tokens=batch_tokens,
        micro_batch_size=micro,
        grad_accum=-(-per_rank // micro),
        world_size=world_size,
        n_steps=n_steps,
        tokens=n_steps * batch_tokens,
        flops=n_steps * batch_tokens * m,
        learning_rate=float(lr),
        eval_every_steps=eval_steps,
        notes=tuple(notes),
    )


def load_run_config(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None
) -> tuple[ModelSpec, TrainConfig]:
    """Spec and train config from a spec file (TOML with an optional ``[train]`` table, or an
    HF ``config.json``), with ``overrides`` (e.g. command-line options; ``None`` values are
    ignored) taking precedence over the file's ``[train]`` table.

    Raises :class:`ConfigError` if no ``compute`` is given anywhere.
    """
    from moescale.spec.io import load_spec_with_extras

    spec, extras = load_spec_with_extras(path)
    table = extras.get("train", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[train] in {path} must be a table; got {type(table).__name__}")
    table = upgrade_train_dict(table)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    moe_given = {k: v for k, v in given.pop("moe", {}).items() if v is not None}
    merged = {**table, **given}
    if moe_given:
        moe_table = merged.get("moe", {})
        if not isinstance(moe_table, dict):
            raise ConfigError(f"[train.moe] in {path} must be a table; got {moe_table!r}")
        merged["moe"] = {**moe_table, **moe_given}
    if "compute" not in merged:
        raise ConfigError("'compute' is required (--compute C in FLOPs, or [train] compute)")
    return spec, TrainConfig.from_dict(merged)
