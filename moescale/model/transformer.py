"""A decoder-only dense/MoE language model built from a :class:`~moescale.spec.ModelSpec`.

Read top to bottom: RMSNorm → rotary embedding → attention → block → model. The
architecture is the one [EL] (arXiv 2507.17702 §2) trains: pre-RMSNorm blocks, RoPE,
GQA through ``scaled_dot_product_attention`` (causal), SwiGLU FFNs, the first
``n_dense_layers`` blocks dense and the rest MoE (:mod:`moescale.model.moe`). Every
spec option the accounting counts is built, so ``sum(p.numel())`` equals
``count_params(spec).total`` (plus the selection-bias buffers when the spec has them,
see :meth:`Transformer.param_counts`). Not built (``ConfigError``): MLA, attention sinks
and expert biases (gpt-oss), LayerNorm and norm/FFN/head biases, other than two norms
per block, NoPE layers, chunked attention, parameter-free L2 QK-norm, gated attention,
hybrid mixer layers, ungated FFNs and single-sublayer blocks (imported HF families);
the accounting still counts those specs.

Conventions: weights ``N(0, init_std²)`` (0.006 as in [EL]), norm weights 1, biases 0;
RMSNorm eps 1e-6 computed in fp32; partial RoPE rotates the first
``2·floor(rope_fraction·head_dim/2)`` dimensions of each head (GPT-NeoX "rotate half"
pairing); sliding-window layers mask keys more than ``sliding_window − 1`` positions back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moescale.errors import ConfigError
from moescale.model.config import MoEConfig
from moescale.model.ffn import FeedForward
from moescale.model.moe import MoELayer
from moescale.spec import ModelSpec

__all__ = ["Transformer", "ModelOutput", "RMSNorm"]


class RMSNorm(nn.Module):
    """``x / rms(x) · w`` (Zhang & Sennrich, arXiv 1910.07467), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_tables(
    seq_len: int, rot_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, rot_dim] of RoPE (Su et al., arXiv 2104.09864), half-split layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rot_dim, 2, device=device).float() / rot_dim)
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` [B, H, T, hd]; the rest pass through."""
    rot = cos.shape[-1]
    if rot == 0:
        return x
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = xr.float() * cos + torch.cat([-x2, x1], dim=-1).float() * sin
    return torch.cat([rotated.to(x.dtype), xp], dim=-1)


class Attention(nn.Module):
    """Causal GQA self-attention with optional QK-norm, biases and a sliding window."""

    def __init__(self, spec: ModelSpec, layer: int) -> None:
        super().__init__()
        d, self.nh, self.nkv, self.hd = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=spec.o_bias)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm == "head":  # Qwen3 / Ling 2.0: per head, shared over heads
            self.q_norm, self.k_norm = RMSNorm(self.hd), RMSNorm(self.hd)
        elif spec.qk_norm == "full":  # OLMoE: over the full projections
            self.q_norm, self.k_norm = RMSNorm(self.nh * self.hd), RMSNorm(self.nkv * self.hd)
        self.window = spec.sliding_window if spec.is_sliding_layer(layer) else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.nh, self.hd)
        k = k.view(b, t, self.nkv, self.hd)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
        v = v.view(b, t, self.nkv, self.hd).transpose(1, 2)
        gqa = self.nkv != self.nh
        if self.window is not None and self.window < t:
            pos = torch.arange(t, device=x.device)
            back = pos[:, None] - pos[None, :]
            mask = (back >= 0) & (back < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))`` (dense or MoE)."""

    def __init__(self, spec: ModelSpec, layer: int, moe: MoEConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.d_model)
        self.attn = Attention(spec, layer)
        self.ffn_norm = RMSNorm(spec.d_model)
        self.is_moe = spec.is_moe_layer(layer)
        if self.is_moe:
            self.ffn = MoELayer(
                d_model=spec.d_model, n_experts=spec.n_experts, top_k=spec.top_k,
                d_expert=spec.d_expert, n_shared=spec.n_shared_experts,
                d_shared=spec.d_shared, cfg=moe, router_bias=spec.router_bias,
                router_score_bias=spec.router_score_bias,
                shared_expert_gate=spec.shared_expert_gate,
            )
        else:
            self.ffn = FeedForward(spec.d_model, spec.d_ffn)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if self.is_moe:
            y, aux, stats = self.ffn(self.ffn_norm(x))
            return x + y, aux, stats
        return x + self.ffn(self.ffn_norm(x)), None, None


@dataclass
class ModelOutput:
    """What :meth:`Transformer.forward` returns.

    Attributes
    ----------
    logits : Tensor [B, T, V]
        Always computed (in the model's dtype).
    loss : Tensor [] or None
        Mean next-token cross-entropy over targets != -100 (computed in fp32), without
        the auxiliary losses; ``None`` without targets.
    aux_loss : Tensor []
        Sum over MoE layers of the coefficient-weighted balancing and z losses
        (0 for a dense model). Train on ``loss + aux_loss``.
    routing_stats : dict[int, dict[str, Tensor]]
        Per MoE layer index: ``load`` [E], ``imbalance`` (max/mean load) and
        ``dropped_fraction``, all detached. Empty for a dense model.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor
    routing_stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


class Transformer(nn.Module):
    """Decoder-only LM built from ``spec`` with the MoE recipe ``moe``.

    Parameters
    ----------
    spec : ModelSpec
        Architecture (validated by the spec).
    moe : MoEConfig, optional
        Routing, balancing and dispatch recipe (default: [EL]'s).
    init_std : float
        Std of the normal initialisation of every weight matrix (0.006, [EL]).

    Examples
    --------
    >>> spec = ModelSpec(d_model=32, n_layers=2, n_heads=4, vocab_size=64, d_ffn=64,
    ...                  n_experts=4, top_k=2, n_shared_experts=1, d_expert=16)
    >>> model = Transformer(spec)
    >>> out = model(torch.randint(0, 64, (2, 8)), targets=torch.randint(0, 64, (2, 8)))
    >>> out.logits.shape, out.loss.ndim
    (torch.Size([2, 8, 64]), 0)
    """

    def __init__(
        self, spec: ModelSpec, moe: MoEConfig | None = None, init_std: float = 0.006
    ) -> None:
        super().__init__()
        for flag, what in (
            (spec.attention == "mla", "attention='mla'"),
            (spec.attention_sinks, "attention_sinks=True"),
            (spec.expert_bias, "expert_bias=True"),
            (spec.norm != "rms", f"norm={spec.norm!r}"),
            (spec.norm_bias, "norm_bias=True"),
            (spec.norms_per_layer != 2, f"norms_per_layer={spec.norms_per_layer}"),
            (spec.ffn_bias, "ffn_bias=True"),
            (spec.head_bias, "head_bias=True"),
            (bool(spec.nope_layers), "nope_layers (layers without RoPE)"),
            (spec.local_attention != "sliding" and spec.sliding_window is not None,
             f"local_attention={spec.local_attention!r}"),
            (spec.qk_norm == "l2", "qk_norm='l2'"),
            (spec.mixer != "none", f"mixer={spec.mixer!r} (hybrid mixer layers)"),
            (spec.attention_gate, "attention_gate=True"),
            (not spec.gated_ffn, "gated_ffn=False"),
            (spec.ffn_layers is not None, "ffn_layers (blocks without an FFN)"),
            (bool(spec.mixerless_layers), "mixerless_layers (blocks without attention)"),
        ):
            if flag:
                raise ConfigError(
                    f"{what} is not supported by the PyTorch model (the accounting counts it); "
                    "use a pre-RMSNorm GQA spec without these features"
                )
        if not init_std > 0:
            raise ConfigError(f"'init_std' must be a number in (0, inf); got {init_std!r}")
        self.spec, self.moe, self.init_std = spec, moe or MoEConfig(), init_std
        self.rot_dim = 2 * int(spec.rope_fraction * spec.head_dim / 2)
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.blocks = nn.ModuleList(Block(spec, i, self.moe) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights ``N(0, init_std²)``, norm weights 1, biases and selection biases 0."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, self.init_std)
        for name, buf in self.named_buffers():
            if name.endswith(("score_bias", "load_since_update")):
                buf.zero_()

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> ModelOutput:
        """Logits of ``tokens`` [B, T] (int64), and the loss when ``targets`` [B, T] is given."""
        if tokens.ndim != 2:
            raise ConfigError(f"'tokens' must have shape [B, T]; got {tuple(tokens.shape)}")
        cos, sin = rope_tables(tokens.shape[1], self.rot_dim, self.spec.rope_theta, tokens.device)
        x = self.embed(tokens)
        aux = x.new_zeros((), dtype=torch.float32)
        stats: dict[int, dict[str, torch.Tensor]] = {}
        for i, block in enumerate(self.blocks):
            x, layer_aux, layer_stats = block(x, cos, sin)
            if layer_aux is not None:
                aux = aux + layer_aux
                stats[i] = layer_stats
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux, routing_stats=stats)

    def update_router_biases(self) -> None:
        """Apply the aux-loss-free bias update of every MoE layer from the loads seen since
        the last call (no-op when ``aux_free_bias_rate`` is 0). Call once per optimiser step."""
        for block in self.blocks:
            if block.is_moe:
                block.ffn.router.update_bias()

    def param_counts(self) -> dict[str, int]:
        """Parameters per group of :func:`moescale.spec.count_params` (``embedding``,
        ``head``, ``attention``, ``norms``, ``dense_ffn``, ``router``, ``routed_experts``,
        ``shared_experts``) and ``total``, counted from the module itself. The router group
        includes the ``score_bias`` buffers when the spec has ``router_score_bias``."""
        groups = dict.fromkeys(
            ("embedding", "head", "attention", "norms", "dense_ffn", "router",
             "routed_experts", "shared_experts"), 0)
        for name, p in self.named_parameters():  # tied head: yielded once, as embedding
            parts = name.split(".")
            if parts[0] in ("embed", "head"):
                group = "embedding" if parts[0] == "embed" else "head"
            elif parts[0] == "norm" or parts[-2].endswith("_norm") and parts[2] != "attn":
                group = "norms"
            elif parts[2] == "attn":
                group = "attention"
            elif not self.blocks[int(parts[1])].is_moe:
                group = "dense_ffn"
            else:
                group = {"router": "router", "experts": "routed_experts"}.get(
                    parts[3], "shared_experts")
            groups[group] += p.numel()
        if self.spec.router_score_bias:
            groups["router"] += sum(
                b.numel() for n, b in self.named_buffers() if n.endswith("score_bias"))
        groups["total"] = sum(groups.values())
        return groups
