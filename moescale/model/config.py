"""`MoEConfig`: the routing and balancing recipe of the MoE layers (not the architecture).

The architecture (widths, E, top-k, shared experts) is the :class:`~moescale.spec.ModelSpec`;
this config chooses *how* tokens are routed and balanced, so one spec can be trained with
the recipe of [EL] (arXiv 2507.17702: softmax top-k, un-renormalised gates, aux loss 0.01,
z-loss 0.001) or of [LING2] / DeepSeek-V3 (sigmoid top-k, normalised gates, routed
scaling, aux-loss-free bias balancing).
"""

from __future__ import annotations

from dataclasses import dataclass

from moescale.errors import ConfigError, check_keys, check_range

__all__ = ["MoEConfig", "ROUTERS", "MOE_BACKENDS"]

ROUTERS: tuple[str, ...] = ("softmax_topk", "softmax_topk_renorm", "sigmoid_topk")
MOE_BACKENDS: tuple[str, ...] = ("auto", "loop", "grouped")


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Routing, balancing and dispatch options of every MoE layer of a model.

    Examples
    --------
    >>> MoEConfig()  # the [EL] recipe
    MoEConfig(router='softmax_topk', routed_scaling=1.0, aux_loss_coef=0.01, z_loss_coef=0.001, \
aux_free_bias_rate=0.0, capacity_factor=None, backend='auto')
    >>> ling = MoEConfig(router="sigmoid_topk", routed_scaling=2.5, aux_loss_coef=0.0,
    ...                  aux_free_bias_rate=1e-3)
    """

    router: str = "softmax_topk"
    """``softmax_topk``: gates = softmax probabilities of the chosen experts, not
    renormalised ([EL] recipe, OLMoE); ``softmax_topk_renorm``: the same renormalised to
    sum to 1 (Mixtral, Qwen3-MoE); ``sigmoid_topk``: sigmoid scores, chosen scores
    normalised to sum to 1, times ``routed_scaling`` (DeepSeek-V3, [LING2])."""
    routed_scaling: float = 1.0
    """Factor on the routed experts' combined output (DeepSeek-V3 ``routed_scaling_factor``);
    applied by every router kind."""
    aux_loss_coef: float = 0.01
    """Coefficient of the GShard/Switch load-balancing loss ``E·Σ_i f_i·P_i`` (0 disables)."""
    z_loss_coef: float = 0.001
    """Coefficient of the router z-loss ``mean_t logsumexp(logits_t)²`` (ST-MoE; 0 disables)."""
    aux_free_bias_rate: float = 0.0
    """u of aux-loss-free balancing ([LING2], DeepSeek-V3): after each step
    ``b_i += u·sign(mean_load − load_i)``; b is added to the scores for expert selection
    only, never to the gate weights. 0 disables."""
    capacity_factor: float | None = None
    """``None``: dropless. Otherwise each expert takes at most
    ``ceil(capacity_factor·T·K/E)`` assignments per layer call (first choices first, then
    token order); the rest are dropped (their gate contributes nothing)."""
    backend: str = "auto"
    """Routed-experts back-end: ``loop`` (readable per-expert reference), ``grouped`` (one
    sort, contiguous per-expert segments; ``grouped_mm`` on CUDA in bf16) or ``auto``, which
    resolves to ``grouped`` (:func:`moescale.model.moe_backends.resolve_backend`)."""

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ConfigError(
                f"'router' must be one of {', '.join(map(repr, ROUTERS))}; got {self.router!r}"
            )
        if self.backend not in MOE_BACKENDS:
            raise ConfigError(
                f"'backend' must be one of {', '.join(map(repr, MOE_BACKENDS))}; "
                f"got {self.backend!r}"
            )
        check_range("routed_scaling", self.routed_scaling, low=0.0, low_inclusive=False)
        check_range("aux_loss_coef", self.aux_loss_coef, low=0.0)
        check_range("z_loss_coef", self.z_loss_coef, low=0.0)
        check_range("aux_free_bias_rate", self.aux_free_bias_rate, low=0.0)
        if self.capacity_factor is not None:
            check_range("capacity_factor", self.capacity_factor, low=0.0, low_inclusive=False)

    @classmethod
    def from_dict(cls, data: dict) -> MoEConfig:
        """Build from a dict; unknown keys are a :class:`ConfigError` naming them."""
        check_keys(data, cls.__dataclass_fields__, "MoE option")
        return cls(**data)
