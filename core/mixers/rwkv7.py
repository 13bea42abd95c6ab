"""RWKV-7 time mixing (the DPLR delta rule behind token shift and low-rank data-dependent gates) and its channel mix."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import token_shift
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype, l2_normalize, split_heads
from core.ops import dplr_delta_rule, mask_padding
from core.registry import register_mixer


@dataclass
class RWKV7State:
    """State of `rwkv7`.

    recurrent: (B, H, K, V) float32 matrix memory.
    shift: (B, 1, d_model) the last valid input, which the next token's token shift reads.
    """

    recurrent: Tensor
    shift: Tensor


@dataclass
class TokenShiftState:
    """State of `RWKV7ChannelMix`: shift (B, 1, d_model), the last valid input."""

    shift: Tensor


def lora_rank(d_model: int, factor: float) -> int:
    """RWKV-7's low-rank width: 32 * round(factor * sqrt(d_model) / 32), at least 32."""
    return max(32, 32 * round(factor * math.sqrt(d_model) / 32))


def low_rank(d_model: int, rank: int, activation: nn.Module, bias: bool) -> nn.Sequential:
    """x -> W2 act(W1 x) (+ b): (..., d_model) -> (..., d_model), W1 without bias."""
    return nn.Sequential(nn.Linear(d_model, rank, bias=False), activation, nn.Linear(rank, d_model, bias=bias))


def _channel_ramp(d_model: int) -> Tensor:
    """i / d_model for channel i: (d_model,), the base of RWKV's token-shift inits."""
    return torch.arange(d_model, dtype=torch.float32) / d_model


def _layer0_init(d_model: int, head_dim: int) -> dict[str, Tensor]:
    """fla's init of RWKV-7's layer 0 (after the official code): token-shift mixes mu (6, D) for r, w, k, v, a, g;
    decay bias w0, learning-rate bias a0 and key-normaliser scale k_k, each (D,)."""
    n = torch.arange(d_model, dtype=torch.float32)
    linear = n / max(d_model - 1, 1) - 0.5
    zigzag = ((n % head_dim) - (head_dim - 1) / 2) / max((head_dim - 1) / 2, 1)
    zigzag = zigzag * zigzag.abs()
    powers = torch.tensor([0.2, 0.9, 0.7, 0.7, 0.9, 0.2])[:, None]
    return dict(
        mu=1.0 - _channel_ramp(d_model) ** powers,
        w0=-6 + 6 * (n / max(d_model - 1, 1)) + 0.5 + 2.5 * zigzag,
        a0=-0.19 + 0.3 * zigzag + 0.4 * linear,
        k_k=0.71 - 0.1 * linear,
    )


@register_mixer("rwkv7", paper='RWKV-7 "Goose" with Expressive Dynamic State Evolution (Peng et al., 2025)')
class RWKV7(Mixer):
    """RWKV-7 time mixing over x: (B, T, d_model) (the block's norm is applied before, as in RWKV).

    x_* = x + (x_{t-1} - x) * mu_* (token shift) for * in r, w, k, v, a, g; r, k, v = W_* x_*;
    log decay g = -exp(-1/2) sigmoid(w0 + W2 tanh(W1 x_w)) in (-0.607, 0) per key channel;
    in-context learning rate eta = sigmoid(a0 + A2 A1 x_a); kappa = L2norm_h(k * k_k);
    k <- k * (1 + (eta - 1) * k_a); o = DPLR delta rule(r, k, v, a = -kappa, b = kappa * eta, g, scale 1);
    y = W_o((GroupNorm_h(o) + (sum_h r * k * r_k) v) * G2 sigmoid(G1 x_g)).

    Args:
        head_dim: channels per head, K = V (num_heads = d_model // head_dim); None = the largest
            divisor of d_model up to 64 (RWKV-7 uses 64).
        decay_low_rank_dim, a_low_rank_dim, gate_low_rank_dim: widths of the low-rank maps of the decay,
            of eta and of the output gate; None = 32 * round(c sqrt(d_model) / 32), at least 32, with
            c = 2.5, 2.5 and 5.
        norm_eps: the per-head GroupNorm uses eps = head_dim * norm_eps.
        impl: op implementation passed to `core.ops.dplr_delta_rule` ("naive", "chunk", None = auto).

    The value residual (later layers mix in layer 0's value) is omitted: a mixer sees only its own
    input, so every layer acts as RWKV-7's layer 0. Inits follow fla for layer 0 (mu, w0, a0, k_k, k_a,
    r_k); weights keep PyTorch's default init (W_o is not zeroed, so a fresh layer is not a no-op).
    For whole RWKV-7 blocks pair it with `RWKV7ChannelMix`.

    State: `RWKV7State(recurrent (B, H, K, K) float32, shift (B, 1, d_model))`.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        decay_low_rank_dim: int | None = None,
        a_low_rank_dim: int | None = None,
        gate_low_rank_dim: int | None = None,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        num_heads, head_dim = split_heads("rwkv7", d_model, head_dim)
        ranks = {"decay_low_rank_dim": (decay_low_rank_dim, 2.5), "a_low_rank_dim": (a_low_rank_dim, 2.5),
                 "gate_low_rank_dim": (gate_low_rank_dim, 5.0)}
        for option, (rank, _) in ranks.items():
            if rank is not None:
                check_positive_int("rwkv7", option, rank)
        rank_w, rank_a, rank_g = (lora_rank(d_model, c) if rank is None else rank for rank, c in ranks.values())
        self.num_heads, self.head_dim, self.impl = num_heads, head_dim, impl
        D, init = d_model, _layer0_init(d_model, head_dim)
        self.mu = nn.Parameter(init["mu"])  # [6, D]
        self.r_proj, self.k_proj, self.v_proj = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.w_lora = low_rank(D, rank_w, nn.Tanh(), bias=True)
        self.a_lora = low_rank(D, rank_a, nn.Identity(), bias=True)
        self.g_lora = low_rank(D, rank_g, nn.Sigmoid(), bias=False)
        with torch.no_grad():
            self.w_lora[-1].bias.copy_(init["w0"])
            self.a_lora[-1].bias.copy_(init["a0"])
        self.k_k = nn.Parameter(init["k_k"])
        self.k_a = nn.Parameter(torch.full((D,), 1.02))
        self.r_k = nn.Parameter(torch.full((num_heads, head_dim), -0.04))
        self.g_norm = nn.GroupNorm(num_heads, D, eps=head_dim * norm_eps)
        self.o_proj = nn.Linear(D, D, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def mix(self, x: Tensor, state: RWKV7State | None, mask: Tensor | None) -> tuple[Tensor, RWKV7State]:
        check_state("rwkv7", state, RWKV7State)
        B, T, D = x.shape
        heads = (self.num_heads, self.head_dim)
        x_prev, shift = token_shift(x, None if state is None else state.shift, mask)
        xr, xw, xk, xv, xa, xg = (x.unsqueeze(2) + (x_prev - x).unsqueeze(2) * self.mu).unbind(2)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        g = -math.exp(-0.5) * torch.sigmoid(self.w_lora(xw).to(gate_dtype(x)))  # log decay in (-0.607, 0)
        eta = torch.sigmoid(self.a_lora(xa))  # in-context learning rate
        kappa = l2_normalize((k * self.k_k).unflatten(-1, heads))  # [B, T, H, K]
        k = k * (1 + (eta - 1) * self.k_a)
        r, k, v, eta, g = (t.unflatten(-1, heads) for t in (r, k, v, eta, g))
        # float32 parameters promote k and kappa; the op takes r, k, v, a, b in one dtype (the projections')
        k, kappa = k.to(r.dtype), kappa.to(r.dtype)
        b = kappa * eta.to(r.dtype)
        if mask is not None:
            k, g = mask_padding(k, g, mask)
            b, _ = mask_padding(b, None, mask)
        o, recurrent = dplr_delta_rule(
            r, k, v, -kappa, b, g, scale=1.0, initial_state=None if state is None else state.recurrent,
            output_final_state=True, impl=self.impl,
        )
        o = self.g_norm(o.flatten(0, 1).flatten(-2)).view(B, T, D)  # GroupNorm per head
        bonus = ((r * k * self.r_k).sum(-1, keepdim=True) * v).flatten(-2)  # [B, T, D]
        return self.o_proj((o + bonus) * self.g_lora(xg)), RWKV7State(recurrent, shift)


class RWKV7ChannelMix(Mixer):
    """RWKV-7's channel mix (its FFN) with the mixer interface and a token-shift state, over
    x: (B, T, d_model): y = W_v ReLU(W_k (x + (x_{t-1} - x) * mu_k))^2.

    It sees one token back only, so it is not registered as a sequence mixer (it would fail the
    contract's bidirectional check). RWKV-7 blocks in a Backbone: register it under a name, then
    alternate it with the time mix and drop the Backbone's own MLP; each gets its own pre-norm and
    residual, as in RWKV, and its shift state streams like any mixer's state:

        core.register_mixer("rwkv7_channel_mix", paper="RWKV-7")(RWKV7ChannelMix)
        core.Backbone(d_model, depth=2 * n_layers, layers=["rwkv7", "rwkv7_channel_mix"], mlp_expand=0)

    Args:
        expand: hidden width = expand * d_model (RWKV-7 uses 4).

    State: `TokenShiftState(shift (B, 1, d_model))`.
    """

    def __init__(self, d_model: int, expand: float = 4.0) -> None:
        super().__init__(d_model)
        hidden = expand * d_model
        if hidden < 1 or hidden != int(hidden):
            raise ValueError(f"RWKV7ChannelMix: expand * d_model = {expand} * {d_model} must be a whole number >= 1")
        self.mu_k = nn.Parameter(1.0 - _channel_ramp(d_model))
        self.key = nn.Linear(d_model, int(hidden), bias=False)
        self.value = nn.Linear(int(hidden), d_model, bias=False)

    def mix(self, x: Tensor, state: TokenShiftState | None, mask: Tensor | None) -> tuple[Tensor, TokenShiftState]:
        check_state("RWKV7ChannelMix", state, TokenShiftState)
        x_prev, shift = token_shift(x, None if state is None else state.shift, mask)
        return self.value(F.relu(self.key(x + (x_prev - x) * self.mu_k)).square()), TokenShiftState(shift)
