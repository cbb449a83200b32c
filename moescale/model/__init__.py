"""PyTorch dense/MoE decoder-only language model built from a :class:`~moescale.spec.ModelSpec`.

- :class:`Transformer` / :func:`build_model` — the model (``transformer.py``).
- :class:`MoEConfig` — routing/balancing/dispatch recipe (``config.py``).
- :class:`MoELayer`, :class:`Router` — the MoE FFN (``moe.py``, ``router.py``) and its
  dispatch back-ends (``moe_backends.py``: ``loop`` reference, ``grouped``).
- :func:`measure_forward_flops` — FLOPs counted by ``FlopCounterMode`` (``flops.py``).
- :func:`bench_moe_layer` — MoE layer vs dense FFN speed (``bench.py``).

See ``docs/model.md``.
"""

from __future__ import annotations

import torch

from moescale.model.bench import bench_moe_layer
from moescale.model.config import MOE_BACKENDS, ROUTERS, MoEConfig
from moescale.model.ffn import FeedForward
from moescale.model.flops import FlopCount, measure_forward_flops
from moescale.model.moe import MoELayer, RoutedExperts
from moescale.model.router import Router, load_balancing_loss, z_loss
from moescale.model.transformer import ModelOutput, Transformer
from moescale.spec import ModelSpec

__all__ = [
    "MOE_BACKENDS",
    "ROUTERS",
    "FeedForward",
    "FlopCount",
    "MoEConfig",
    "MoELayer",
    "ModelOutput",
    "RoutedExperts",
    "Router",
    "Transformer",
    "bench_moe_layer",
    "build_model",
    "load_balancing_loss",
    "measure_forward_flops",
    "z_loss",
]


def build_model(
    spec: ModelSpec,
    moe: MoEConfig | None = None,
    init_std: float = 0.006,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Build and initialise a :class:`Transformer` directly on ``device`` (``"meta"``
    builds shapes only, for counting large specs) in ``dtype``.

    Examples
    --------
    >>> from moescale.spec.presets import ling_mini_beta
    >>> from moescale.spec import count_params
    >>> m = build_model(ling_mini_beta(), device="meta")
    >>> m.param_counts()["total"] == count_params(ling_mini_beta()).total
    True
    """
    with torch.device(device if device is not None else "cpu"):
        model = Transformer(spec, moe, init_std=init_std)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model
