"""Training to a compute budget: config, trainer, checkpoints, multi-process, benchmark.

``train(spec, TrainConfig(compute=C, ...), out_dir)`` trains ``spec`` for
``D = C / M`` tokens (Ling M at the run's sequence length, [EL] arXiv 2507.17702)
with the [EL] recipe (AdamW 0.9/0.95, wd 0.1, clip 1.0, WSD, Eq. 3 learning rate
and batch), resumes from a checkpoint, and returns the run record. See
``docs/training.md``.
"""

from moescale.train.config import (
    TRAIN_SCHEMA_VERSION,
    TrainConfig,
    TrainPlan,
    el_batch_opt,
    el_lr_opt,
    resolve_plan,
)
from moescale.train.identity import run_hash, run_identity
from moescale.train.schedule import lr_at
from moescale.train.step import train_step
from moescale.train.trainer import train

__all__ = [
    "TRAIN_SCHEMA_VERSION",
    "TrainConfig",
    "TrainPlan",
    "el_batch_opt",
    "el_lr_opt",
    "lr_at",
    "resolve_plan",
    "run_hash",
    "run_identity",
    "train",
    "train_step",
]
