"""sLSTM: scalar-memory LSTM with exponential gating, a max-stabiliser and block-diagonal recurrence (xLSTM)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import GatedMLP, ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_choice, check_divides, check_positive_int
from core.mixers._common import check_state, gate_dtype
from core.mixers._headwise import HeadwiseLinear, MultiHeadNorm
from core.ops.mlstm import FORGET_GATES
from core.registry import register_mixer


@dataclass
class SLSTMState:
    """State of the sLSTM layer.

    h, c, n, m: (B, H, head_dim) hidden output, cell, normaliser and log stabiliser, float32 (float64
    for float64 inputs); m = -inf before the first token, so that token sets m = i~ (the reference's rule).
    conv: (B, conv_kernel - 1, d_model) last inputs of the causal convolution.
    """

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor
    conv: Tensor


@register_mixer("slstm", paper="xLSTM: Extended Long Short-Term Memory (Beck et al., 2024)")
class SLSTM(Mixer):
    """sLSTM layer over x: (B, T, d_model) -> (B, T, d_model) (spec 6.4).

    x_c = SiLU(conv(x)); [i~, f~] = headwise(x_c), [z~, o~] = headwise(x); per step and head
    raw = W x_t + R h_{t-1} + b with R block-diagonal (H blocks of head_dim x 4 head_dim);
    m_t = max(log f_t + m_{t-1}, i~_t), i' = exp(i~ - m_t), f' = exp(log f_t + m_{t-1} - m_t),
    c_t = f' c_{t-1} + i' tanh(z~), n_t = f' n_{t-1} + i', h_t = sigmoid(o~) c_t / n_t;
    y = MultiHeadNorm(h), then y + GatedMLP_gelu(RMSNorm(y)) when ffn_expand > 0.

    Sequential by nature: W x for all steps is one matmul; the loop only runs one batched matmul
    over the heads plus pointwise ops per step, in float32 (float64 for float64 inputs).

    Args:
        num_heads: H, heads of the block-diagonal recurrence; head_dim = d_model / H.
        conv_kernel: width of the causal depthwise convolution feeding the i and f gates.
        forget_gate: "sigmoid" (log f = logsigmoid(f~), the paper) or "exp" (log f = f~).
        norm_eps: epsilon of the per-head layer norm.
        ffn_expand: hidden size over d_model of a gated GeLU MLP applied inside the mixer after the
            sLSTM (the xLSTM sLSTM block uses 4/3, see `core.presets.xlstm`); 0 = none.

    Starts as xLSTM: R = 0, forget bias 5 - 12 (j / (head_dim - 1)) ** 0.3 over each head's units,
    other biases 0. Padded tokens carry the state through unchanged. State: `SLSTMState`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        conv_kernel: int = 4,
        forget_gate: str = "sigmoid",
        norm_eps: float = 1e-5,
        ffn_expand: float = 0.0,
    ) -> None:
        super().__init__(d_model)
        check_positive_int("slstm", "num_heads", num_heads)
        check_positive_int("slstm", "conv_kernel", conv_kernel)
        check_divides("slstm", "d_model", d_model, "num_heads", num_heads)
        check_choice("slstm", "forget_gate", forget_gate, FORGET_GATES)
        if ffn_expand < 0:
            raise ValueError(f"slstm: ffn_expand must be >= 0 (0 = no MLP), got {ffn_expand}")
        self.num_heads, self.head_dim, self.forget_gate = num_heads, d_model // num_heads, forget_gate
        dh = self.head_dim
        self.conv = ShortConv(d_model, conv_kernel, bias=True, activation="silu")
        self.if_proj = HeadwiseLinear(d_model, num_heads, 2 * dh)
        self.zo_proj = HeadwiseLinear(d_model, num_heads, 2 * dh)
        self.recurrent = nn.Parameter(torch.zeros(num_heads, dh, 4 * dh))  # per head: [i, f, z, o] columns
        bias = torch.zeros(num_heads, 4, dh)
        bias[:, 1] = 5.0 - 12.0 * torch.linspace(0.0, 1.0, dh) ** 0.3
        self.bias = nn.Parameter(bias.flatten(1))
        self.norm = MultiHeadNorm(num_heads, dh, eps=norm_eps)
        self.ffn_norm = nn.RMSNorm(d_model) if ffn_expand > 0 else None
        self.ffn = GatedMLP(d_model, expand=ffn_expand, activation="gelu") if ffn_expand > 0 else None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, forget_gate={self.forget_gate!r}"

    def mix(self, x: Tensor, state: SLSTMState | None, mask: Tensor | None) -> tuple[Tensor, SLSTMState]:
        check_state("slstm", state, SLSTMState)
        B, T, _ = x.shape
        dtype = gate_dtype(x)
        x_c, conv = self.conv(x, None if state is None else state.conv, mask)
        heads = (B, T, self.num_heads, 2 * self.head_dim)
        wx = torch.cat([self.if_proj(x_c).view(heads), self.zo_proj(x).view(heads)], dim=-1) + self.bias
        wx = wx.to(dtype).permute(1, 2, 0, 3)  # [T, H, B, 4 head_dim]
        if state is None:
            zeros = wx.new_zeros(self.num_heads, B, self.head_dim)
            cell = (zeros, zeros, zeros, torch.full_like(zeros, -torch.inf))
        else:
            cell = tuple(t.to(dtype).transpose(0, 1) for t in (state.h, state.c, state.n, state.m))
        valid = None if mask is None else mask.T[:, None, :, None]  # [T, 1, B, 1]
        outputs, cell = self._scan(wx, cell, valid)
        y = self.norm(outputs.permute(2, 0, 1, 3).to(x.dtype))  # [B, T, d_model]
        if self.ffn is not None:
            y = y + self.ffn(self.ffn_norm(y))
        h, c, n, m = (t.transpose(0, 1) for t in cell)
        return y, SLSTMState(h, c, n, m, conv)

    def _scan(self, wx: Tensor, cell: tuple[Tensor, ...], valid: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run the recurrence over wx [T, H, B, 4 dh] from cell (h, c, n, m) [H, B, dh]; returns h for all steps [T, H, B, dh]."""
        R = self.recurrent.to(wx.dtype)
        h, c, n, m = cell
        outputs = []
        for t in range(wx.shape[0]):
            i, f, z, o = torch.baddbmm(wx[t], h, R).chunk(4, dim=-1)  # [H, B, dh] each
            log_f_m = (F.logsigmoid(f) if self.forget_gate == "sigmoid" else f) + m
            m_new = torch.maximum(log_f_m, i)
            i, f = (i - m_new).exp(), (log_f_m - m_new).exp()
            c_new = f * c + i * torch.tanh(z)
            n_new = f * n + i
            new = (torch.sigmoid(o) * c_new / n_new, c_new, n_new, m_new)
            h, c, n, m = new if valid is None else (torch.where(valid[t], a, b) for a, b in zip(new, (h, c, n, m)))
            outputs.append(h)
        return torch.stack(outputs), (h, c, n, m)
