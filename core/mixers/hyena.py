"""Hyena: implicit long convolutions (evaluated by FFT) interleaved with multiplicative gates."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype
from core.mixers._conv_history import restore, valid_first, window_before
from core.registry import register_mixer


@dataclass
class HyenaState:
    """State of `hyena`: everything a long convolution needs, so O(T) memory.

    conv: (B, short_kernel - 1, (order + 1) d_model) last inputs of the short convolution.
    history: (B, S, order - 1, d_model) inputs of the order - 1 long convolutions, right-aligned:
        row b holds its `seen[b]` valid tokens last, zeros before.
    seen: (B,) int64 valid tokens so far (at most max_len).
    """

    conv: Tensor
    history: Tensor
    seen: Tensor


def causal_conv(u: Tensor, h: Tensor, out_len: int) -> Tensor:
    """y_t = sum_{j <= t} h_j u_{t - j} at the last `out_len` positions t of u.

    u: (B, L, C); h: (L, C), the filter at lags 0..L-1 -> (B, out_len, C). By FFT (zero-padded to
    avoid wrap-around), O(L log L); a single position is a direct sum, O(L).
    """
    L = u.shape[1]
    if out_len == 1:
        return torch.einsum("blc,lc->bc", u, h.flip(0)).unsqueeze(1)
    n = 1 << (2 * L - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) * torch.fft.rfft(h, n=n, dim=0), n=n, dim=1)
    return y[:, L - out_len : L]


class ImplicitFilter(nn.Module):
    """Hyena's implicit filter: h(j) = MLP(z(j)) * exp(-r_c j / max_len) for lags j = 0..n-1.

    z(j) = [j / max_len, cos(2 pi f_b j / max_len), -sin(2 pi f_b j / max_len)] over emb_dim = 1 + 2 bands
    frequencies f_b = linspace(1e-4, bands - 1, bands); the MLP alternates Linear and sin(freq * .)
    (one learnable freq vector); decay rates r_c are spread linearly over channels between
    |ln(decay_target)| / slow_decay_pct and / fast_decay_pct.
    """

    def __init__(
        self,
        channels: int,
        max_len: int,
        emb_dim: int,
        filter_dim: int,
        filter_layers: int,
        sin_freq: float,
        fast_decay_pct: float,
        slow_decay_pct: float,
        decay_target: float,
    ) -> None:
        super().__init__()
        self.channels, self.max_len, self.bands = channels, max_len, (emb_dim - 1) // 2
        dims = [emb_dim] + [filter_dim] * filter_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.freq = nn.Parameter(torch.full((filter_dim,), float(sin_freq)))
        self.out = nn.Linear(filter_dim, channels, bias=False)
        self.decay_range = (abs(math.log(decay_target)) / slow_decay_pct, abs(math.log(decay_target)) / fast_decay_pct)

    def forward(self, n: int, dtype: torch.dtype) -> Tensor:
        """The filter at lags 0..n-1, (n, channels), computed in `dtype`."""
        device = self.freq.device
        t = torch.arange(n, device=device, dtype=dtype)[:, None] / self.max_len  # [n, 1]
        bands = torch.linspace(1e-4, self.bands - 1, self.bands, device=device, dtype=dtype)
        z = torch.cat([t, torch.cos(2 * math.pi * bands * t), -torch.sin(2 * math.pi * bands * t)], dim=-1)
        z = z.to(self.freq.dtype)
        for layer in self.layers:
            z = torch.sin(self.freq * layer(z))
        rates = torch.linspace(*self.decay_range, self.channels, device=device, dtype=dtype)
        return self.out(z).to(dtype) * torch.exp(-t * rates)


@register_mixer("hyena", paper="Hyena Hierarchy: Towards Larger Convolutional Language Models (Poli et al., 2023)")
class Hyena(Mixer):
    """Hyena operator of order N over x: (B, T, d_model) -> (B, T, d_model).

    [x_0, ..., x_{N-1}, v] = shortconv(W_in x); for o = 1..N-1: v = h_o * (v x_{N-o}) + b_o (v x_{N-o}),
    a causal long convolution with the implicit filter h_o (`ImplicitFilter`); y = W_out(v x_0).

    Streaming keeps every valid input of the long convolutions (`HyenaState`): memory O(T), and each
    new token costs O(T_seen) per channel (a direct sum; a chunk of T tokens costs O((S + T) log(S + T))
    by FFT). Padded tokens are absent: the convolutions run over the valid tokens only.

    Args:
        order: N >= 2, number of gates; N - 1 long convolutions (the paper's default is 2).
        max_len: longest sequence (valid tokens, history included) the filter covers; its positions
            are normalised by max_len, so longer sequences raise a ValueError.
        short_kernel: width of the short causal depthwise convolution after W_in.
        filter_dim: width of the filter MLP.
        emb_dim: positional features of the filter MLP, odd (1 + 2 * bands).
        filter_layers: Linear + sin layers of the filter MLP before its output layer.
        sin_freq: initial frequency of the sin activations.
        fast_decay_pct, slow_decay_pct, decay_target: the exponential window reaches decay_target at
            fast_decay_pct * max_len lags for the fastest channel, slow_decay_pct * max_len for the slowest.
    """

    def __init__(
        self,
        d_model: int,
        order: int = 2,
        max_len: int = 2048,
        short_kernel: int = 3,
        filter_dim: int = 64,
        emb_dim: int = 33,
        filter_layers: int = 3,
        sin_freq: float = 1.0,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        decay_target: float = 1e-2,
    ) -> None:
        super().__init__(d_model)
        positive = dict(max_len=max_len, short_kernel=short_kernel, filter_dim=filter_dim, filter_layers=filter_layers)
        for option, value in positive.items():
            check_positive_int("hyena", option, value)
        if not isinstance(order, int) or order < 2:
            raise ValueError(f"hyena: order must be an int >= 2 (order - 1 long convolutions), got {order!r}")
        if not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"hyena: emb_dim must be an odd int >= 3 (1 + 2 * bands), got {emb_dim!r}")
        if not (0 < fast_decay_pct and 0 < slow_decay_pct and 0 < decay_target < 1):
            raise ValueError("hyena: need fast_decay_pct > 0, slow_decay_pct > 0 and 0 < decay_target < 1")
        self.order, self.max_len = order, max_len
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model)
        self.short_conv = ShortConv((order + 1) * d_model, short_kernel, bias=True, activation=None)
        self.filter = ImplicitFilter(
            (order - 1) * d_model, max_len, emb_dim, filter_dim, filter_layers,
            sin_freq, fast_decay_pct, slow_decay_pct, decay_target,
        )
        self.filter_bias = nn.Parameter(torch.randn(order - 1, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, order={self.order}, max_len={self.max_len}"

    def mix(self, x: Tensor, state: HyenaState | None, mask: Tensor | None) -> tuple[Tensor, HyenaState]:
        check_state("hyena", state, HyenaState)
        B, T, D = x.shape
        u, conv = self.short_conv(self.in_proj(x), None if state is None else state.conv, mask)
        u, order, lengths = valid_first(u, mask)
        *gates, v = u.split(D, dim=-1)
        past = x.new_zeros(B, 0, self.order - 1, D) if state is None else state.history.to(x.dtype)
        seen = lengths + (0 if state is None else state.seen)
        longest = int(seen.max())
        if longest > self.max_len:
            raise ValueError(
                f"hyena: a sequence reached {longest} valid tokens but max_len={self.max_len}; the implicit "
                "filter is defined on max_len lags, so build the mixer with a larger max_len"
            )
        S, dtype = past.shape[1], gate_dtype(x)
        h = F.pad(self.filter(min(S + T, self.max_len), dtype), (0, 0, 0, max(S + T - self.max_len, 0)))
        h = h.unflatten(-1, (self.order - 1, D))  # [S + T, order - 1, D]; lags past max_len only meet zeros
        history = []
        for o in range(self.order - 1):
            v = v * gates[self.order - 1 - o]
            full = torch.cat([past[:, :, o], v], dim=1)  # [B, S + T, D], each row's valid tokens back to back
            history.append(window_before(full, S + lengths, longest))
            v = causal_conv(full.to(dtype), h[:, o], T).to(v.dtype) + v * self.filter_bias[o]
        y = restore(v * gates[0], order)
        return self.out_proj(y), HyenaState(conv, torch.stack(history, dim=2), seen)
