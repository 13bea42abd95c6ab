"""Titans (Behrouz, Zhong & Mirrokni, 2025): the neural long-term memory (LMM) combined with sliding-window
attention as a layer (MAL) or as a gate (MAG); spec memory_mixers.md 1.5 and 1.7. MAC is in titans_mac.py."""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import check_nonnegative_int, check_positive_int
from core.mixers._common import check_state
from core.mixers.attention import AttentionMixer, KVCache
from core.mixers.titans_memory import MemoryLayerState, MemoryMixer
from core.registry import register_mixer

TITANS_PAPER = "Titans: Learning to Memorize at Test Time (Behrouz, Zhong & Mirrokni, 2025)"
# Largest inner step size theta_t of the Titans mixers. One gradient step on ||M(k) - v||^2 is stable only while
# theta times the squared norm of each layer's input stays below 2 (the LMS bound); the MLP memory's hidden layer
# has expand * head_dim inputs, so with theta_max 1.0 or 0.1 the memory diverged to NaN within 150 training steps
# of the synthetic tasks, and with 0.02 it trained (benchmarks/synthetic, 2026-11-23).
TITANS_THETA_MAX = 0.02


def titans_memory(name: str, d_model: int, options: dict) -> MemoryMixer:
    """The Titans LMM: a `depth`-layer MLP memory, L2 loss, decay (r = 1 - alpha) and momentum (surprise)."""
    return MemoryMixer(d_model, options.pop("head_dim"), name=name, kind="mlp", residual_norm=False, objective="l2",
                       retention="decay", optimizer="momentum", **options)


@dataclass
class TitansState:
    """State of MAL / MAG: the memory's `MemoryLayerState` and the sliding-window attention's `KVCache`."""

    memory: MemoryLayerState
    attention: KVCache


class _TitansHybrid(Mixer):
    """The LMM beside sliding-window attention over x~ = [P || x]: the `num_persistent` learned persistent
    tokens P start each sequence (state None) and are the attention's sinks, visible to every query whatever
    the window; their outputs are dropped. Subclasses combine the two in `combine`."""

    def __init__(
        self,
        d_model: int,
        window: int = 64,
        num_heads: int | None = None,
        num_persistent: int = 4,
        head_dim: int | None = None,
        expand: float = 4.0,
        depth: int = 2,
        chunk_size: int = 16,
        theta_max: float = TITANS_THETA_MAX,
        use_short_conv: bool = True,
        conv_size: int = 4,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        name = self.registered_name
        check_positive_int(name, "window", window)
        check_nonnegative_int(name, "num_persistent", num_persistent)
        self.memory = titans_memory(name, d_model, dict(
            head_dim=head_dim, expand=expand, depth=depth, chunk_size=chunk_size, theta_max=theta_max,
            use_short_conv=use_short_conv, conv_size=conv_size, impl=impl,
        ))
        self.attention = AttentionMixer(d_model, num_heads=num_heads, window=window, num_sinks=num_persistent)
        self.persistent = nn.Parameter(0.02 * torch.randn(num_persistent, d_model)) if num_persistent else None

    def mix(self, x: Tensor, state: TitansState | None, mask: Tensor | None) -> tuple[Tensor, TitansState]:
        check_state(self.registered_name, state, TitansState)
        prefix = 0
        if state is None and self.persistent is not None:
            prefix = self.persistent.shape[0]
            x = torch.cat([self.persistent.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(x.shape[0], prefix), mask], dim=1)
        y, state = self.combine(x, state, mask)
        return y[:, prefix:], state

    @abc.abstractmethod
    def combine(self, x: Tensor, state: TitansState | None, mask: Tensor | None) -> tuple[Tensor, TitansState]:
        """(x~ (B, T', d_model), state, mask) -> (y (B, T', d_model), new state)."""


@register_mixer("titans_mal", paper=TITANS_PAPER)
class TitansMAL(_TitansHybrid):
    """Titans, memory as a layer: m = LMM(x~), y = SWA(x~ + m) over x~ = [P || x] (B, T, d_model).

    The LMM (spec 1.1-1.3) per head: S_t = eta_t S_{t-1} - theta_t grad ||M°(k_t) - v_t||^2,
    M_t = (1 - alpha_t) M_{t-1} + S_t, o_t = M_t(q_t), M a `depth`-layer MLP; its output is
    out_proj(RMSNorm_h(o) * SiLU(W_g x)). SWA is causal softmax attention (RoPE) over the last `window` tokens
    and the persistent tokens, which every query sees.

    Args:
        window: the attention's window.
        num_heads: attention heads (default d_model // 64, at least 1).
        num_persistent: learned persistent tokens P starting each sequence, always visible to the attention
            (0 = none).
        head_dim, expand, depth, chunk_size, theta_max, use_short_conv, conv_size, impl: the memory's, as for `miras`;
            theta_max defaults to 0.02 (see `TITANS_THETA_MAX`).

    State: `TitansState(memory: MemoryLayerState, attention: KVCache)`.
    """

    def combine(self, x: Tensor, state: TitansState | None, mask: Tensor | None) -> tuple[Tensor, TitansState]:
        m, memory = self.memory(x, None if state is None else state.memory, mask)
        y, attention = self.attention(x + m, None if state is None else state.attention, mask)
        return y, TitansState(memory, attention)


@register_mixer("titans_mag", paper=TITANS_PAPER)
class TitansMAG(_TitansHybrid):
    """Titans, memory as a gate: y = W_o(RMSNorm_a(SWA(x~)) * sigmoid(RMSNorm_b(LMM(x~)))) over x~ = [P || x].

    Args and state as `titans_mal`.
    """

    def __init__(self, d_model: int, **options: object) -> None:
        super().__init__(d_model, **options)
        self.attention_norm, self.memory_norm = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def combine(self, x: Tensor, state: TitansState | None, mask: Tensor | None) -> tuple[Tensor, TitansState]:
        m, memory = self.memory(x, None if state is None else state.memory, mask)
        y, attention = self.attention(x, None if state is None else state.attention, mask)
        return self.out_proj(self.attention_norm(y) * torch.sigmoid(self.memory_norm(m))), TitansState(memory, attention)
