"""Miras (Behrouz et al., 2025): a neural memory configured along four axes, and its presets Moneta, Yaad, Memora.

Memory architecture (vector / matrix / MLP), attentional bias (L2, Lp, Huber), retention (L2 decay,
Lq normalisation, KL on the simplex) and learning rule (GD, momentum); spec memory_mixers.md, section 2.
"""
from __future__ import annotations

from core.mixers.titans_memory import MemoryMixer
from core.registry import register_mixer

MIRAS_PAPER = (
    "It's All Connected: A Journey Through Test-Time Memorization, Attentional Bias, Retention, and Online "
    "Optimization (Behrouz et al., 2025)"
)


@register_mixer("miras", paper=MIRAS_PAPER)
class Miras(MemoryMixer):
    """A neural memory M trained online while reading x: (B, T, d_model); per head and token
    S_t = eta_t S_{t-1} - theta_t grad l(M°; k_t, v_t) (no S for GD), M_t = r_t M_{t-1} + S_t, o_t = M_t(q_t);
    y = out_proj(RMSNorm_h(o) * SiLU(W_g x)). The defaults (L2 bias, decay, momentum, 2-layer MLP) are
    the Titans memory (LMM) on its own.

    Args:
        memory: "vector" (M(k) = w * k), "matrix" (M(k) = W k) or "mlp" (`depth` layers, width head_dim * expand).
        objective: attentional bias on r = M(k) - v: "l2", "lp" (||r||_p^p, smooth sign) or "huber"
            (per channel, threshold softplus(W x) per token and head).
        p: the exponent of "lp".
        retention: "decay" (r_t = sigmoid(W x), Titans' 1 - alpha), "lq" (Moneta: A_t = r_t A_{t-1} - theta_t grad,
            M = A / ||A||_q^(q-2), normaliser frozen at each chunk's start) or "kl" (Memora: rows of each weight
            on the simplex, a softmax step at each chunk's first token).
        q: the exponent of "lq".
        optimizer: "gd", "momentum" or "muon" (momentum orthogonalised by Newton-Schulz, `ns_steps` iterations).
        head_dim: channels per head; None = the largest divisor of d_model up to 16.
        expand, depth: hidden width (head_dim * expand) and layers of the MLP memory.
        residual_norm: M(k) = k + LN(f(k)) (the Miras memory) instead of M(k) = f(k).
        chunk_size: b, gradients within a chunk are taken at its starting weights (b = 1: fully online).
        theta_max: theta_t = theta_max * sigmoid(W x).
        use_short_conv, conv_size: the causal depthwise convolution over q, k, v.
        impl: op implementation ("naive", "chunk", None = auto).

    State: `MemoryLayerState(memory: NeuralMemoryState, conv)`.
    """

    def __init__(
        self,
        d_model: int,
        memory: str = "mlp",
        objective: str = "l2",
        p: float = 2.0,
        retention: str = "decay",
        q: float = 2.0,
        optimizer: str = "momentum",
        ns_steps: int = 5,
        head_dim: int | None = None,
        expand: float = 4.0,
        depth: int = 2,
        residual_norm: bool = True,
        chunk_size: int = 16,
        theta_max: float = 1.0,
        use_short_conv: bool = True,
        conv_size: int = 4,
        impl: str | None = None,
    ) -> None:
        super().__init__(
            d_model, head_dim, kind=memory, objective=objective, p=p, retention=retention, q=q, optimizer=optimizer,
            ns_steps=ns_steps, expand=expand, depth=depth, residual_norm=residual_norm, chunk_size=chunk_size,
            theta_max=theta_max, use_short_conv=use_short_conv, conv_size=conv_size, impl=impl,
        )


@register_mixer("moneta", paper=MIRAS_PAPER)
class Moneta(Miras):
    """Moneta: Miras with the Lp attentional bias (p = 3) and Lq retention (q = 4), plain GD (spec 2.2).
    Args and state as `miras`; theta_max defaults to 0.02: the memory W = A / ||A||_q^(q-2) grows as the
    accumulator A decays and the Lp error grows as |r|^(p-1), and at 1 float32 rounding errors grow
    without bound over 1000 tokens."""

    def __init__(self, d_model: int, p: float = 3.0, q: float = 4.0, theta_max: float = 0.02, **options: object) -> None:
        preset = {"objective": "lp", "retention": "lq", "optimizer": "gd", "p": p, "q": q, "theta_max": theta_max}
        super().__init__(d_model, **{**preset, **options})


@register_mixer("yaad", paper=MIRAS_PAPER)
class Yaad(Miras):
    """Yaad: Miras with the Huber attentional bias (data-dependent threshold), decay retention, plain GD (spec 2.3).
    Args and state as `miras`; residual_norm is off by default: with it, as decay shrinks f(k), the LayerNorm
    amplifies float32 rounding errors without bound over 1000 tokens."""

    def __init__(self, d_model: int, **options: object) -> None:
        preset = {"objective": "huber", "retention": "decay", "optimizer": "gd", "residual_norm": False}
        super().__init__(d_model, **{**preset, **options})


@register_mixer("memora", paper=MIRAS_PAPER)
class Memora(Miras):
    """Memora: Miras with the L2 bias and KL retention, weights rows on the simplex, plain GD (spec 2.4).
    Args and state as `miras`; residual_norm is off by default: rows on the simplex average their inputs,
    so f(k) is nearly constant across channels and a LayerNorm of it amplifies rounding errors without bound."""

    def __init__(self, d_model: int, **options: object) -> None:
        preset = {"objective": "l2", "retention": "kl", "optimizer": "gd", "residual_norm": False}
        super().__init__(d_model, **{**preset, **options})
