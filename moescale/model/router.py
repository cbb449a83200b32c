"""Top-k routers and their balancing losses.

Three router kinds behind one module (see :class:`~moescale.model.config.MoEConfig`):

- ``softmax_topk`` — gates are the softmax probabilities of the k chosen experts, not
  renormalised: the [EL] recipe (arXiv 2507.17702 §2) and OLMoE's ``norm_topk_prob=False``.
- ``softmax_topk_renorm`` — the same, renormalised over the k chosen experts.
- ``sigmoid_topk`` — DeepSeek-V3 (arXiv 2412.19437 Eq. 13-16) / [LING2] (arXiv
  2510.22115): ``s = sigmoid(logits)``, gates ``s_i / Σ_chosen s_j``.

Every kind multiplies its gates by ``routed_scaling``. Routing runs in fp32.

Balancing:

- load-balancing loss of GShard/Switch (arXiv 2101.03961 Eq. 4):
  ``L_aux = E · Σ_i f_i · P_i`` with ``f_i`` the fraction of the T·K assignments sent to
  expert i and ``P_i`` the mean routing probability of expert i (softmax probabilities;
  for the sigmoid router, the scores normalised per token as in DeepSeek-V3's
  sequence-wise loss). ``L_aux = 1`` for perfectly uniform routing.
- router z-loss (ST-MoE, arXiv 2202.08906 Eq. 5): ``mean_t logsumexp(logits_t)²``.
- aux-loss-free balancing ([LING2]; Wang et al., arXiv 2408.15664): a per-expert bias
  ``b`` (buffer ``score_bias``) added to the scores for *selection only*, updated outside
  the gradient by ``b_i += u·sign(mean_load − load_i)`` (:meth:`Router.update_bias`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moescale.model.config import MoEConfig

__all__ = ["Router", "Routing", "load_balancing_loss", "z_loss"]


@dataclass
class Routing:
    """One router call on T tokens.

    Attributes
    ----------
    expert_idx : LongTensor [T, K]
        Chosen experts per token, best first (slot k is the token's (k+1)-th choice).
    gates : Tensor [T, K]
        Gate weight of each choice (fp32, differentiable w.r.t. the router).
    aux_loss : Tensor []
        ``aux_loss_coef·L_aux + z_loss_coef·L_z`` (0 when both coefficients are 0).
    load : Tensor [E]
        Assignments per expert (fp32, detached), before any capacity drop.
    """

    expert_idx: torch.Tensor
    gates: torch.Tensor
    aux_loss: torch.Tensor
    load: torch.Tensor


def load_balancing_loss(probs: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """GShard/Switch balancing loss ``E·Σ_i f_i·P_i`` (arXiv 2101.03961 Eq. 4-6).

    Parameters
    ----------
    probs : Tensor [T, E]
        Routing probabilities per token (rows sum to 1); the gradient flows through them.
    load : Tensor [E]
        Assignments per expert (top-k counts); ``f_i = load_i / Σ load``.

    Examples
    --------
    >>> T, E = 8, 4
    >>> float(load_balancing_loss(torch.full((T, E), 1 / E), torch.full((E,), 2.0)))
    1.0
    """
    n_experts = probs.shape[-1]
    f = load / load.sum().clamp_min(1.0)
    return n_experts * torch.sum(f * probs.mean(dim=0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss ``mean_t logsumexp(logits_t)²`` (ST-MoE, arXiv 2202.08906 Eq. 5)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


class Router(nn.Module):
    """Linear router ``D -> E`` with top-k selection, gates and balancing losses.

    Parameters
    ----------
    d_model, n_experts, top_k : int
        D, E and K.
    cfg : MoEConfig
        Router kind, routed scaling, loss coefficients and the aux-free bias rate.
    bias : bool
        A learned bias on the router logits (``spec.router_bias``, gpt-oss).
    score_bias : bool
        Keep a selection-bias buffer ``score_bias`` [E] (``spec.router_score_bias``). It is
        also created when ``cfg.aux_free_bias_rate > 0``.
    """

    def __init__(
        self, d_model: int, n_experts: int, top_k: int, cfg: MoEConfig, *,
        bias: bool = False, score_bias: bool = False,
    ) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.cfg = n_experts, top_k, cfg
        self.linear = nn.Linear(d_model, n_experts, bias=bias)
        if score_bias or cfg.aux_free_bias_rate > 0:
            self.register_buffer("score_bias", torch.zeros(n_experts, dtype=torch.float32))
        else:
            self.score_bias = None
        # Assignments per expert accumulated over training forwards since the last bias
        # update (several micro-batches per optimiser step); int64, so that
        # ``module.to(dtype)`` leaves the counts exact.
        self.register_buffer(
            "load_since_update", torch.zeros(n_experts, dtype=torch.long), persistent=False
        )

    def _apply(self, fn, recurse=True):
        # ``model.to(torch.bfloat16)`` must not round the balancing bias: keep it fp32.
        super()._apply(fn, recurse)
        if self.score_bias is not None and self.score_bias.dtype != torch.float32:
            self.score_bias = self.score_bias.float()
        return self

    def forward(self, x: torch.Tensor) -> Routing:
        """Route ``x`` [T, D]; see :class:`Routing`."""
        cfg = self.cfg
        logits = self.linear(x).float()
        if cfg.router == "sigmoid_topk":
            scores = torch.sigmoid(logits)
        else:
            scores = torch.softmax(logits, dim=-1)
        select = scores if self.score_bias is None else scores + self.score_bias.float()
        # Sorted: slot 0 is each token's first choice, the capacity limit's priority order
        # (moe.apply_capacity). Unsorted, CPU topk returns E=64, K=8 choices in heap order.
        expert_idx = torch.topk(select.detach(), self.top_k, dim=-1, sorted=True).indices
        gates = scores.gather(1, expert_idx)
        if cfg.router == "sigmoid_topk":
            gates = gates / (gates.sum(dim=-1, keepdim=True) + 1e-20)
        elif cfg.router == "softmax_topk_renorm":
            gates = gates / gates.sum(dim=-1, keepdim=True)
        if cfg.routed_scaling != 1.0:
            gates = gates * cfg.routed_scaling
        with torch.no_grad():
            counts = torch.bincount(expert_idx.reshape(-1), minlength=self.n_experts)
            if self.training:
                self.load_since_update += counts
            load = counts.float()
        aux = logits.new_zeros(())
        if cfg.aux_loss_coef > 0:
            probs = scores
            if cfg.router == "sigmoid_topk":
                probs = scores / scores.sum(dim=-1, keepdim=True)
            aux = aux + cfg.aux_loss_coef * load_balancing_loss(probs, load)
        if cfg.z_loss_coef > 0:
            aux = aux + cfg.z_loss_coef * z_loss(logits)
        return Routing(expert_idx=expert_idx, gates=gates, aux_loss=aux, load=load)

    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free update ``b_i += u·sign(mean_load − load_i)`` from the loads seen
        since the last call ([LING2]); loads are summed over ranks when
        ``torch.distributed`` is initialised so every replica keeps the same bias.
        A no-op when ``aux_free_bias_rate`` is 0 or no training forward ran."""
        u = self.cfg.aux_free_bias_rate
        if u <= 0 or self.score_bias is None:
            return
        load = self.load_since_update.double()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every rank calls it: no early return above
        self.load_since_update.zero_()
        if bool(load.any()):
            self.score_bias += (u * torch.sign(load.mean() - load)).float()
