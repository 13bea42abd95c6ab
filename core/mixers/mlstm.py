"""The original xLSTM mLSTM block: up-projection, conv + SiLU, headwise q/k/v, exponential gating, output gate."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_choice, check_divides, check_positive_int, whole_width
from core.mixers._common import check_state, gate_dtype
from core.mixers._headwise import HeadwiseLinear, MultiHeadNorm
from core.ops.mlstm import FORGET_GATES, MLSTMState, mlstm, neutral_gates
from core.registry import register_mixer


@dataclass
class MLSTMBlockState:
    """State of the mLSTM block.

    cell: `MLSTMState` (C (B, H, K, V), n (B, H, K), m (B, H)), float32 (float64 for float64 inputs).
    conv: (B, conv_kernel - 1, inner) last inputs of the causal convolution.
    """

    cell: MLSTMState
    conv: Tensor


@register_mixer("mlstm", paper="xLSTM: Extended Long Short-Term Memory (Beck et al., 2024)")
class MLSTM(Mixer):
    """mLSTM block over x: (B, T, d_model) -> (B, T, d_model) (spec 6.3, "original xLSTM mLSTM block").

    [x_m, z] = W_up x (inner = proj_factor * d_model each); x_c = SiLU(conv(x_m));
    q, k = headwise(x_c), v = headwise(x_m); [i, f] = W_g [q, k, v] + b per head;
    h = mLSTM(q, k, v, i, f) per head (`core.ops.mlstm`); out = W_down((MultiHeadNorm(h) + skip * x_c) * SiLU(z)).

    Args:
        num_heads: mLSTM heads; head_dim = inner / num_heads.
        proj_factor: inner = proj_factor * d_model.
        conv_kernel: width of the causal depthwise convolution.
        qkv_block_size: channels per block of the block-diagonal q, k, v projections.
        forget_gate: "sigmoid" (log f = logsigmoid(f~), the paper) or "exp" (log f = f~).
        eps: epsilon added to the mLSTM normaliser.
        norm_eps: epsilon of the per-head layer norm.
        bias: biases in the up, down and q/k/v projections.
        impl: op implementation passed to `core.ops.mlstm` ("naive", "chunk", None = auto).

    Gates start as in xLSTM: zero weights, forget bias linspace(3, 6) over heads, input bias N(0, 0.1).
    Padded tokens are absent (input gate -inf, forget gate 1). State: `MLSTMBlockState`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        proj_factor: float = 2.0,
        conv_kernel: int = 4,
        qkv_block_size: int = 4,
        forget_gate: str = "sigmoid",
        eps: float = 1e-6,
        norm_eps: float = 1e-5,
        bias: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        inner = whole_width("mlstm", "proj_factor", d_model, proj_factor)
        for option, value in (("num_heads", num_heads), ("conv_kernel", conv_kernel), ("qkv_block_size", qkv_block_size)):
            check_positive_int("mlstm", option, value)
        check_divides("mlstm", "inner = proj_factor * d_model", inner, "num_heads", num_heads)
        check_divides("mlstm", "inner = proj_factor * d_model", inner, "qkv_block_size", qkv_block_size)
        check_choice("mlstm", "forget_gate", forget_gate, FORGET_GATES)
        self.inner, self.num_heads, self.forget_gate, self.eps, self.impl = inner, num_heads, forget_gate, eps, impl
        self.proj_up = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv = ShortConv(inner, conv_kernel, bias=True, activation="silu")
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(inner, inner // qkv_block_size, bias=bias) for _ in range(3))
        self.gates = nn.Linear(3 * inner, 2 * num_heads)  # [i, f] per head
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias[:num_heads].normal_(0.0, 0.1)
            self.gates.bias[num_heads:] = torch.linspace(3.0, 6.0, num_heads)
        self.norm = MultiHeadNorm(num_heads, inner // num_heads, eps=norm_eps)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, inner={self.inner}, num_heads={self.num_heads}, forget_gate={self.forget_gate!r}"

    def mix(self, x: Tensor, state: MLSTMBlockState | None, mask: Tensor | None) -> tuple[Tensor, MLSTMBlockState]:
        check_state("mlstm", state, MLSTMBlockState)
        x_m, z = self.proj_up(x).chunk(2, dim=-1)
        x_c, conv = self.conv(x_m, None if state is None else state.conv, mask)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        i, f = self.gates(torch.cat([q, k, v], dim=-1)).to(gate_dtype(x)).chunk(2, dim=-1)  # [B, T, H] each
        if mask is not None:
            i, f = neutral_gates(i, f, mask, self.forget_gate)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (q, k, v))
        h, cell = mlstm(
            q, k, v, i, f,
            forget_gate=self.forget_gate,
            initial_state=None if state is None else state.cell,
            output_final_state=True,
            eps=self.eps,
            impl=self.impl,
        )
        h = self.norm(h) + self.skip * x_c
        return self.proj_down(h * F.silu(z)), MLSTMBlockState(cell, conv)
