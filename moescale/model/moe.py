"""The MoE FFN layer: Router → dispatch/combine back-end → routed experts → shared experts.

Shape letters: T tokens, D model width, E routed experts, K top-k, F expert width.

Output per token ``y = routed + shared`` with ``routed = Σ_k g_k · SwiGLU_{e_k}(x)`` (gates
``g`` from the router, see :mod:`moescale.model.router`) and ``shared`` the always-on
shared experts: ``E_s`` experts of width ``d_shared`` are one SwiGLU of width
``E_s·d_shared`` (the sum of E_s SwiGLUs is exactly that), optionally scaled by a sigmoid
gate ``sigmoid(x·w_g)`` (Qwen2-MoE).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moescale.model.config import MoEConfig
from moescale.model.ffn import FeedForward
from moescale.model.moe_backends import get_backend, resolve_backend
from moescale.model.router import Router

__all__ = ["MoELayer", "RoutedExperts", "apply_capacity"]


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored as 3-D weights in ``nn.Linear``'s (out, in) layout.

    ``w_gate_up`` [E, 2F, D] (gate rows first, then up) and ``w_down`` [E, D, F]: the
    layout of transformers' OLMoE/Qwen2-MoE experts and of torchtitan, whose transposes
    are the column-major operands ``grouped_mm`` wants.
    """

    def __init__(self, n_experts: int, d_model: int, d_expert: int) -> None:
        super().__init__()
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, 2 * d_expert, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_expert))


def apply_capacity(expert_idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Mark assignments beyond each expert's ``capacity`` as dropped (expert index E).

    Priority (GShard, arXiv 2006.16668 §2.2): all first choices before any second choice,
    then token order.
    """
    t, k = expert_idx.shape
    flat = expert_idx.t().reshape(-1)  # k-major: priority order
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(flat)
    pos[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    kept = torch.where(pos < capacity, flat, torch.full_like(flat, n_experts))
    return kept.view(k, t).t()


class MoELayer(nn.Module):
    """Routed + shared SwiGLU experts.

    Parameters
    ----------
    d_model, n_experts, top_k, d_expert : int
        D, E, K, F.
    n_shared, d_shared : int
        Shared experts E_s and the width of each.
    cfg : MoEConfig
        Router kind, balancing, capacity and back-end.
    router_bias, router_score_bias, shared_expert_gate : bool
        Architecture options of :class:`~moescale.spec.ModelSpec` of the same names.

    Examples
    --------
    >>> layer = MoELayer(d_model=16, n_experts=4, top_k=2, d_expert=8, n_shared=1,
    ...                  d_shared=8, cfg=MoEConfig())
    >>> _ = [nn.init.normal_(p, std=0.02) for p in layer.parameters()]
    >>> y, aux, stats = layer(torch.randn(3, 5, 16))
    >>> y.shape, sorted(stats)
    (torch.Size([3, 5, 16]), ['dropped_fraction', 'imbalance', 'load'])
    """

    def __init__(
        self, *, d_model: int, n_experts: int, top_k: int, d_expert: int,
        n_shared: int = 0, d_shared: int = 0, cfg: MoEConfig | None = None,
        router_bias: bool = False, router_score_bias: bool = False,
        shared_expert_gate: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg or MoEConfig()
        self.n_experts, self.top_k = n_experts, top_k
        self.router = Router(
            d_model, n_experts, top_k, self.cfg, bias=router_bias, score_bias=router_score_bias
        )
        self.experts = RoutedExperts(n_experts, d_model, d_expert)
        self.shared = FeedForward(d_model, n_shared * d_shared) if n_shared else None
        self.shared_gate = (
            nn.Linear(d_model, 1, bias=False) if (n_shared and shared_expert_gate) else None
        )
        self.backend = resolve_backend(self.cfg.backend)  # "auto" → a concrete back-end
        self.run_experts = get_backend(self.backend)

    def capacity(self, n_tokens: int) -> int | None:
        """Per-expert capacity ``ceil(capacity_factor·T·K/E)``; ``None`` when dropless."""
        if self.cfg.capacity_factor is None:
            return None
        return math.ceil(self.cfg.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``x`` [..., D] → (output [..., D], aux loss [], routing statistics).

        Statistics (detached): ``load`` [E] assignments per expert, ``imbalance`` max/mean
        load, ``dropped_fraction`` of the T·K assignments dropped by the capacity limit.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        routing = self.router(x)
        expert_idx = routing.expert_idx
        capacity = self.capacity(x.shape[0])
        dropped = x.new_zeros((), dtype=torch.float32)
        if capacity is not None:
            expert_idx = apply_capacity(expert_idx, self.n_experts, capacity)
            dropped = (expert_idx == self.n_experts).float().mean()
        # An ungated shared expert runs inside the back-end (one more work item of the CPU
        # segment loops); a gated one (Qwen2-MoE) is added here.
        gated = self.shared_gate is not None
        out = self.run_experts(x, expert_idx, routing.gates.to(x.dtype), self.experts,
                               shared=None if gated else self.shared)
        if self.shared is not None and gated:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        load = routing.load
        stats = {
            "load": load,
            "imbalance": load.max() / load.mean().clamp_min(1e-9),
            "dropped_fraction": dropped,
        }
        return out.view(shape), routing.aux_loss, stats
