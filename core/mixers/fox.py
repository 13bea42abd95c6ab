"""Forgetting Transformer (FoX): softmax attention with a data-dependent forget gate, in its "Pro" block form."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import GatedRMSNorm, ShortConv, token_shift
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import HeadProjection, check_state, gate_dtype, split_heads
from core.ops.forgetting_attention import ForgettingAttentionState, forgetting_attention
from core.registry import register_mixer


def forget_bias_init(num_heads: int, decay_time_min: float | None, decay_time_max: float | None) -> Tensor:
    """Forget-gate biases (num_heads,) with decay times -1 / logsigmoid(b_h) log-spaced in [min, max]; zeros for None."""
    if decay_time_min is None and decay_time_max is None:
        return torch.zeros(num_heads)
    numbers = all(isinstance(t, (int, float)) for t in (decay_time_min, decay_time_max))
    if not (numbers and 0 < decay_time_min <= decay_time_max):
        raise ValueError(
            f"fox: decay_time_min and decay_time_max must be numbers with 0 < min <= max (or both None for a zero "
            f"forget-gate bias), got {decay_time_min!r} and {decay_time_max!r}"
        )
    tau = torch.logspace(math.log10(decay_time_min), math.log10(decay_time_max), num_heads, dtype=torch.float64)
    return -torch.log(torch.expm1(1 / tau)).float()


@dataclass
class FoXState:
    """State of `fox`.

    cache: the `ForgettingAttentionState` (keys after shift and QK-norm, values after shift, the log
        forget-gate sums relative to the last token, valid flags) of every token seen.
    shift: (B, 1, H (2K)) the last valid pre-shift key and value projections, or None without kv_shift.
    conv: (B, conv_size - 1, H (3K)) the short convolution's last valid inputs, or None without it.
    """

    cache: ForgettingAttentionState
    shift: Tensor | None = None
    conv: Tensor | None = None


@register_mixer(
    "fox", paper="Forgetting Transformer: Softmax Attention with a Forget Gate (Lin, Nikishin, He & Courville, 2025)"
)
class ForgettingTransformer(Mixer):
    """FoX time mixing over x: (B, T, d_model) -> (B, T, d_model) (spec 4; the block's pre-norm is outside).

    q, k, v = W_Q x, W_K x, W_V x per head (optionally through a causal short convolution);
    KV-shift: k_t <- a_t k_{t-1} + (1 - a_t) k_t with a_t = sigmoid(u_h . x_t) per head, likewise v;
    QK-norm: per-head RMSNorm with learnable gains on q and k; log f_t = logsigmoid(w_f . x_t + b_f) per head;
    o_i = sum_{j<=i} softmax_j(q_i . k_j / sqrt(K) + sum_{l=j+1..i} log f_l) v_j (`core.ops.forgetting_attention`);
    y = W_O(RMSNorm_h(o) * sigmoid(W_G x)). No positional embedding: the forget gate gives the recency bias.

    Args:
        head_dim: channels per head (num_heads = d_model // head_dim); None = the largest divisor of
            d_model up to 64.
        output_gate: the sigmoid output gate sigmoid(W_G x) (Pro: on).
        output_norm: the per-head RMSNorm of o (Pro: on).
        qk_norm: the per-head RMSNorm of q and k (Pro: on).
        kv_shift: the data-dependent token shift of k and v (Pro: on).
        short_conv: a causal depthwise convolution of width `conv_size` over q, k, v after their
            projections, no activation (off; an alternative to the shift used by other mixers here).
        conv_size: width of that convolution.
        decay_time_min, decay_time_max: initial decay times tau_h of the heads, log-spaced in
            [min, max]: the forget-gate bias starts at -log(expm1(1 / tau_h)), so that f = exp(-1 / tau_h)
            at a zero logit (the paper's init of its bias-only gate). Both None: bias 0, f ~ 0.5 at init
            (the reference code), which hides tokens a few dozen steps back from a fresh layer.
        norm_eps: epsilon of the RMSNorms.
        impl: op implementation ("naive" = full logit matrix, "chunk" = tiles with an online softmax,
            None = auto).

    Padded tokens (mask False) are absent: they are not attended to, forget nothing and are skipped
    by the shift and the convolution.
    State: `FoXState` (a KV cache that grows by T entries per call, plus the shift and conv tails).
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        output_gate: bool = True,
        output_norm: bool = True,
        qk_norm: bool = True,
        kv_shift: bool = True,
        short_conv: bool = False,
        conv_size: int = 4,
        decay_time_min: float | None = 16.0,
        decay_time_max: float | None = 1024.0,
        norm_eps: float = 1e-6,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        H, K = split_heads("fox", d_model, head_dim)
        check_positive_int("fox", "conv_size", conv_size)
        self.num_heads, self.head_dim, self.impl = H, K, impl
        self.output_gate, self.output_norm, self.qk_norm, self.kv_shift = output_gate, output_norm, qk_norm, kv_shift
        self.proj = HeadProjection(d_model, H, [K, K, K] + ([K] if output_gate else []))
        self.forget_proj = nn.Linear(d_model, H)
        with torch.no_grad():
            self.forget_proj.bias.copy_(forget_bias_init(H, decay_time_min, decay_time_max))
        self.shift_proj = nn.Linear(d_model, 2 * H, bias=False) if kv_shift else None
        self.conv = ShortConv(3 * H * K, conv_size, activation=None) if short_conv else None
        self.q_norm = GatedRMSNorm(H * K, eps=norm_eps, group_size=K) if qk_norm else None
        self.k_norm = GatedRMSNorm(H * K, eps=norm_eps, group_size=K) if qk_norm else None
        self.o_norm = GatedRMSNorm(H * K, eps=norm_eps, group_size=K) if output_norm else None
        self.out_proj = nn.Linear(H * K, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, output_gate={self.output_gate}, "
            f"output_norm={self.output_norm}, qk_norm={self.qk_norm}, kv_shift={self.kv_shift}, short_conv={self.conv is not None}"
        )

    def mix(self, x: Tensor, state: FoXState | None, mask: Tensor | None) -> tuple[Tensor, FoXState]:
        check_state("fox", state, FoXState)
        if state is not None and state.cache.keys.shape[0] != x.shape[0]:
            raise ValueError(f"fox state is for batch size {state.cache.keys.shape[0]} but x has batch size {x.shape[0]}")
        q, k, v, *gate = self.proj(x)  # [B, T, H, K] each
        conv = None
        if self.conv is not None:
            qkv, conv = self.conv(torch.cat([q, k, v], dim=-1).flatten(-2), None if state is None else state.conv, mask)
            q, k, v = qkv.unflatten(-1, (self.num_heads, -1)).chunk(3, dim=-1)
        shift = None
        if self.shift_proj is not None:
            k, v, shift = self._shift(x, k, v, None if state is None else state.shift, mask)
        if self.q_norm is not None:
            q, k = self.q_norm(q.flatten(-2)).view_as(q), self.k_norm(k.flatten(-2)).view_as(k)
        log_f = F.logsigmoid(self.forget_proj(x).to(gate_dtype(x)))  # [B, T, H]
        o, cache = forgetting_attention(
            q, k, v, log_f, mask=mask, initial_state=None if state is None else state.cache,
            output_final_state=True, impl=self.impl,
        )
        o = o.flatten(-2)
        if self.o_norm is not None:
            o = self.o_norm(o)
        if self.output_gate:
            o = o * torch.sigmoid(gate[0].flatten(-2))
        return self.out_proj(o), FoXState(cache, shift, conv)

    def _shift(
        self, x: Tensor, k: Tensor, v: Tensor, last: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """k_t <- a_t k_{t-1} + (1 - a_t) k_t (likewise v) with the previous valid token's projections."""
        kv = torch.cat([k, v], dim=-1)  # [B, T, H, 2K]
        previous, last = token_shift(kv.flatten(-2), last, mask)
        previous = previous.view_as(kv)
        a = torch.sigmoid(self.shift_proj(x)).unflatten(-1, (2, self.num_heads, 1))  # [B, T, 2, H, 1]
        k_prev, v_prev = previous.chunk(2, dim=-1)
        return torch.lerp(k, k_prev, a[:, :, 0]), torch.lerp(v, v_prev, a[:, :, 1]), last
