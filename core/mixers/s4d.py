"""S4D: a diagonal linear time-invariant state space model per channel, run as a long convolution or a recurrence."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import compact_valid, scatter_back
from core.mixer import Mixer
from core.mixers._checks import check_choice, check_positive_int
from core.mixers._common import check_state, gate_dtype
from core.mixers._scan import scan
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer("s4d", paper="On the Parameterization and Initialization of Diagonal State Space Models (Gu, Gupta, Goel & Ré, 2022)")
class S4D(Mixer):
    """S4D layer over x: (B, T, d_model) -> (B, T, d_model), one SSM per channel (H = d_model).

    Per channel, with N/2 complex modes A = -exp(A_log_real) + i A_imag and step dt = exp(log_dt)
    (zero-order hold): lambda = exp(dt A), B_bar = (lambda - 1) / A,
        h_t = lambda h_{t-1} + B_bar u_t,   y_t = 2 Re(C h_t) + D u_t,
    i.e. y = K * u + D u with the kernel K_l = 2 Re(sum_n C B_bar lambda^l) (a Vandermonde product).
    out = GLU(W GELU(y)) (the S4D block's output layer).

    Args:
        d_state: N, real state size per channel (N/2 complex modes); even.
        dt_min, dt_max: dt starts log-uniform in [dt_min, dt_max].
        init: "lin" (S4D-Lin, A_imag = pi n) or "inv" (S4D-Inv, A_imag = N/pi (N/(2n+1) - 1)); A_real = -1/2.
        mode: "conv" (FFT convolution with the kernel; the final state in closed form) or "recurrent"
            (`core.ops.linear_scan` on complex tensors). Both give the same outputs and states.
        impl: op implementation of the recurrent mode ("naive", "chunk", None = auto).

    log_dt, A_log_real and A_imag are marked `_no_weight_decay`. C is stored as real (H, N/2, 2).
    State: `RecurrentState(recurrent (B, d_model, N/2) complex64 (complex128 for float64 inputs))`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        init: str = "lin",
        mode: str = "conv",
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        check_positive_int("s4d", "d_state", d_state)
        if d_state % 2:
            raise ValueError(f"s4d: d_state must be even (N/2 complex modes), got {d_state}")
        check_choice("s4d", "init", init, ("lin", "inv"))
        check_choice("s4d", "mode", mode, ("conv", "recurrent"))
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"s4d: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        H, modes = d_model, d_state // 2
        self.modes, self.mode, self.impl = modes, mode, impl
        self.log_dt = nn.Parameter(torch.empty(H).uniform_(math.log(dt_min), math.log(dt_max)))
        self.A_log_real = nn.Parameter(torch.full((H, modes), math.log(0.5)))
        n = torch.arange(modes, dtype=torch.float32)
        imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
        self.A_imag = nn.Parameter(imag.repeat(H, 1))
        for p in (self.log_dt, self.A_log_real, self.A_imag):
            p._no_weight_decay = True
        self.C = nn.Parameter(torch.randn(H, modes, 2) * 0.5**0.5)  # complex standard normal
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={2 * self.modes}, mode={self.mode!r}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("s4d", state, RecurrentState)
        dtype = gate_dtype(x)
        u = x.to(dtype)
        log_lam, B_bar, C = self.discretize(dtype)  # [H, n] complex each
        h0 = None if state is None else state.recurrent.to(log_lam.dtype)
        run = self._convolution if self.mode == "conv" else self._recurrence
        y, final = run(u, h0, mask, log_lam, B_bar, C)
        y = y + self.D.to(dtype) * u
        return F.glu(self.out_proj(F.gelu(y).to(x.dtype)), dim=-1), RecurrentState(final)

    def discretize(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(dt A = log lambda, B_bar = (lambda - 1) / A, C), each (H, N/2) complex, from parameters in `dtype`."""
        A = torch.complex(-self.A_log_real.to(dtype).exp(), self.A_imag.to(dtype))
        log_lam = A * self.log_dt.to(dtype).exp()[:, None]
        return log_lam, torch.expm1(log_lam) / A, torch.view_as_complex(self.C.to(dtype).contiguous())

    def _recurrence(
        self, u: Tensor, h0: Tensor | None, mask: Tensor | None, log_lam: Tensor, B_bar: Tensor, C: Tensor
    ) -> tuple[Tensor, Tensor]:
        """h_t = lambda h_{t-1} + B_bar u_t by `linear_scan` over (B, T, H * N/2) complex channels."""
        Bsz, T, H = u.shape
        a = log_lam.exp().flatten().expand(Bsz, T, -1)
        b = (u[..., None] * B_bar).flatten(2)
        h, final = scan(a, b, None if h0 is None else h0.flatten(1), mask, impl=self.impl)
        y = 2 * torch.einsum("bthn,hn->bth", h.unflatten(2, (H, -1)), C).real
        return y, final.unflatten(1, (H, -1))

    def _convolution(
        self, u: Tensor, h0: Tensor | None, mask: Tensor | None, log_lam: Tensor, B_bar: Tensor, C: Tensor
    ) -> tuple[Tensor, Tensor]:
        """y = K * u by FFT (valid tokens moved to the front), plus the decayed initial state;
        h_T = sum_j lambda^(L-1-j) B_bar u_j + lambda^L h_0 over the L valid tokens, in closed form."""
        Bsz, T, H = u.shape
        powers = (log_lam[..., None] * torch.arange(T, device=u.device, dtype=u.dtype)).exp()  # [H, n, T], lambda^l
        kernel = 2 * torch.einsum("hn,hnl->hl", C * B_bar, powers).real  # [H, T]
        if mask is None:
            u_front, lengths, newest_first = u, None, u.flip(1)
        else:
            u_front, order, lengths = compact_valid(u * mask[..., None], mask)
            newest_first = compact_valid(u.flip(1) * mask.flip(1)[..., None], mask.flip(1))[0]  # last valid token first
        n_fft = 2 * T  # zero padding: a linear, not circular, convolution
        spectrum = torch.fft.rfft(u_front, n=n_fft, dim=1) * torch.fft.rfft(kernel.T, n=n_fft, dim=0)
        y = torch.fft.irfft(spectrum, n=n_fft, dim=1)[:, :T]
        final = B_bar * torch.einsum("blh,hnl->bhn", newest_first.to(powers.dtype), powers)
        if h0 is not None:
            y = y + 2 * torch.einsum("bhn,hn,hnt->bth", h0, C, powers * log_lam[..., None].exp()).real  # lambda^(t+1) h_0
            steps = torch.full((Bsz,), T, device=u.device) if lengths is None else lengths
            final = final + (log_lam * steps[:, None, None].to(u.dtype)).exp() * h0
        return (y if mask is None else scatter_back(y, order)), final
