"""DeltaNet, Gated DeltaNet and DeltaProduct: the delta rule over short-convolved, L2-normalised queries and keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import GatedRMSNorm, ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype, init_dt_bias, l2_normalize, scaled_dim, split_heads
from core.ops import delta_product, delta_rule, mask_padding
from core.registry import register_mixer
from core.state import RecurrentState


class _DeltaRuleMixer(Mixer):
    """The body shared by `deltanet`, `gated_deltanet` and `deltaproduct` (n = n_h keys per token):

    [q, k_1..k_n, v_1..v_n] = SiLU(ShortConv(W x)), one convolution over all channels;
    q, k_j L2-normalised per head; beta_j = sigmoid(W_beta x), times 2 with allow_neg_eigval;
    with a forget gate g = -exp(A_log) softplus(W_a x + dt_bias) per head (Mamba-2 style), else g = 0;
    o = delta rule (n = 1) or DeltaProduct; y = out_proj(RMSNorm_h(o) * w [* SiLU(W_g x)]).
    Padded tokens get k = 0 and g = 0, so they leave the state unchanged.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_householder: int,
        forget_gate: bool,
        head_dim: int | None,
        expand_v: float,
        use_output_gate: bool,
        allow_neg_eigval: bool,
        use_short_conv: bool,
        conv_size: int,
        norm_eps: float,
        impl: str | None,
    ) -> None:
        super().__init__(d_model)
        name = self.registered_name
        num_heads, head_dim = split_heads(name, d_model, head_dim)
        value_dim = scaled_dim(name, "expand_v", head_dim, expand_v)
        check_positive_int(name, "n_h", num_householder)
        check_positive_int(name, "conv_size", conv_size)
        H, K, V, n = num_heads, head_dim, value_dim, num_householder
        self.num_heads, self.key_dim, self.value_dim, self.num_householder = H, K, V, n
        self.forget_gate, self.use_output_gate, self.allow_neg_eigval = forget_gate, use_output_gate, allow_neg_eigval
        self.impl = impl
        self.qkv_widths = [H * K, n * H * K, n * H * V]
        self.widths = [sum(self.qkv_widths), n * H, H if forget_gate else 0, H * V if use_output_gate else 0]
        self.in_proj = nn.Linear(d_model, sum(self.widths), bias=False)
        self.conv = ShortConv(self.widths[0], conv_size, bias=False, activation="silu") if use_short_conv else None
        if forget_gate:  # Gated DeltaNet's init: A ~ U(0, 16), dt log-uniform in [1e-3, 0.1]
            self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
            self.dt_bias = nn.Parameter(init_dt_bias(H, 1e-3, 0.1, 1e-4))
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.norm = GatedRMSNorm(H * V, eps=norm_eps, norm_before_gate=True, group_size=V)
        self.out_proj = nn.Linear(H * V, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"n_h={self.num_householder}, allow_neg_eigval={self.allow_neg_eigval}"
        )

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state(self.registered_name, state, RecurrentState)
        H, K, V, n = self.num_heads, self.key_dim, self.value_dim, self.num_householder
        qkv, beta, a, gate = self.in_proj(x).split(self.widths, dim=-1)
        if self.conv is None:
            qkv, conv = F.silu(qkv), None
        else:
            qkv, conv = self.conv(qkv, None if state is None else state.conv, mask)
        qk, v = qkv.split([self.qkv_widths[0] + self.qkv_widths[1], self.qkv_widths[2]], dim=-1)
        qk = l2_normalize(qk.unflatten(-1, ((1 + n) * H, K)))  # q's and k's heads side by side: one normalisation
        q, k = qk[:, :, :H], qk[:, :, H:].unflatten(2, (n, H))  # [B, T, H, K], [B, T, n, H, K]
        v = v.unflatten(-1, (n, H, V))
        dtype = gate_dtype(x)
        beta = beta.to(dtype).sigmoid().unflatten(-1, (n, H)) * (2.0 if self.allow_neg_eigval else 1.0)
        g = -self.A_log.to(dtype).exp() * F.softplus(a.to(dtype) + self.dt_bias.to(dtype)) if self.forget_gate else None
        if mask is not None:
            k, g = mask_padding(k.flatten(2, 3), g, mask)
            k = k.unflatten(2, (n, H))
        o, recurrent = self._recur(q, k, v, beta, g, None if state is None else state.recurrent)
        y = self.out_proj(self.norm(o.flatten(-2), gate if self.use_output_gate else None))
        return y, RecurrentState(recurrent, conv)

    def _recur(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """One delta-rule step per token: k, v, beta carry a sub-token dim of size 1."""
        return delta_rule(
            q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], g, initial_state=state, output_final_state=True, impl=self.impl
        )


@register_mixer(
    "deltanet",
    paper="Parallelizing Linear Transformers with the Delta Rule over Sequence Length (Yang et al., 2024)",
)
class DeltaNet(_DeltaRuleMixer):
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t / sqrt(K), over
    x: (B, T, d_model), with q, k, v = SiLU(ShortConv(W x)), q and k L2-normalised per head,
    beta = sigmoid(W_beta x); y = out_proj(RMSNorm_h(o) [* SiLU(W_g x)]).

    Args:
        head_dim: key width per head (num_heads = d_model // head_dim); None = the largest divisor of
            d_model up to 64.
        expand_v: value width per head = head_dim * expand_v.
        use_output_gate: gate the normalised output with SiLU(W_g x) (fla's use_gate, off for DeltaNet).
        allow_neg_eigval: beta = 2 sigmoid(.) in (0, 2), so I - beta k k^T can have eigenvalue -1
            (reflections: state tracking such as parity).
        use_short_conv: the width-`conv_size` causal depthwise convolution over q, k, v (else SiLU only).
        conv_size: width of that convolution.
        norm_eps: epsilon of the per-head RMSNorm.
        impl: op implementation passed to `core.ops.delta_rule` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, K, V) float32, conv (B, conv_size - 1, H (2K + V)) or None)`.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        expand_v: float = 1.0,
        use_output_gate: bool = False,
        allow_neg_eigval: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(
            d_model, num_householder=1, forget_gate=False, head_dim=head_dim, expand_v=expand_v,
            use_output_gate=use_output_gate, allow_neg_eigval=allow_neg_eigval, use_short_conv=use_short_conv,
            conv_size=conv_size, norm_eps=norm_eps, impl=impl,
        )


@register_mixer(
    "gated_deltanet", paper="Gated Delta Networks: Improving Mamba2 with Delta Rule (Yang, Kautz & Hatamizadeh, 2025)"
)
class GatedDeltaNet(_DeltaRuleMixer):
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t / sqrt(K), over
    x: (B, T, d_model): DeltaNet with g_t = -exp(A_log) softplus(W_a x + dt_bias) per head (Mamba-2's
    decay) and, by default, an output gate.

    Args:
        head_dim, use_short_conv, conv_size, norm_eps: as for `deltanet`.
        expand_v: value width per head = head_dim * expand_v (the paper uses 2).
        use_output_gate: y = out_proj(RMSNorm_h(o) * SiLU(W_g x)); False drops the gate.
        allow_neg_eigval: beta = 2 sigmoid(.) in (0, 2) (negative eigenvalues).
        impl: op implementation passed to `core.ops.delta_rule` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, K, V) float32, conv (B, conv_size - 1, H (2K + V)) or None)`.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        expand_v: float = 2.0,
        use_output_gate: bool = True,
        allow_neg_eigval: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(
            d_model, num_householder=1, forget_gate=True, head_dim=head_dim, expand_v=expand_v,
            use_output_gate=use_output_gate, allow_neg_eigval=allow_neg_eigval, use_short_conv=use_short_conv,
            conv_size=conv_size, norm_eps=norm_eps, impl=impl,
        )


@register_mixer(
    "deltaproduct",
    paper="DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products (Siems et al., 2025)",
)
class GatedDeltaProduct(_DeltaRuleMixer):
    """n_h delta-rule steps per token: S <- exp(g_t) S, then for j = 1..n_h
    S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T; o_t = S_t^T q_t / sqrt(K). The transition is a
    product of n_h generalised Householder matrices; n_h = 1 is Gated DeltaNet. x: (B, T, d_model).

    Args:
        n_h: Householder steps per token, each with its own key, value and beta.
        head_dim, expand_v, use_output_gate, use_short_conv, conv_size, norm_eps: as for `gated_deltanet`.
        use_forget_gate: the Mamba-2 style decay g_t; False gives (ungated) DeltaProduct.
        allow_neg_eigval: beta = 2 sigmoid(.) in (0, 2); on by default as in the paper's state-tracking setups.
        impl: op implementation passed to `core.ops.delta_product` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, K, V) float32, conv (B, conv_size - 1, H (K + n_h (K + V))) or None)`.
    """

    def __init__(
        self,
        d_model: int,
        n_h: int = 2,
        head_dim: int | None = None,
        expand_v: float = 2.0,
        use_forget_gate: bool = True,
        use_output_gate: bool = True,
        allow_neg_eigval: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(
            d_model, num_householder=n_h, forget_gate=use_forget_gate, head_dim=head_dim, expand_v=expand_v,
            use_output_gate=use_output_gate, allow_neg_eigval=allow_neg_eigval, use_short_conv=use_short_conv,
            conv_size=conv_size, norm_eps=norm_eps, impl=impl,
        )

    def _recur(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return delta_product(q, k, v, beta, g, initial_state=state, output_final_state=True, impl=self.impl)
