"""LRU: a linear recurrent unit with a complex diagonal recurrence and exponential parameterisation (spec 7.2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype
from core.mixers._scan import scan
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer("lru", paper="Resurrecting Recurrent Neural Networks for Long Sequences (Orvieto et al., 2023)")
class LRU(Mixer):
    """LRU layer over u: (B, T, d_model) -> (B, T, d_model):

        x_t = lambda * x_{t-1} + gamma * (B u_t),   y_t = Re(C x_t) + D * u_t,

    with N complex states, lambda = exp(-exp(nu_log) + i exp(theta_log)) (so |lambda| < 1) and the
    input normalisation gamma = exp(gamma_log), initialised to sqrt(1 - |lambda|^2).

    Args:
        d_state: N complex states; None = d_model.
        r_min, r_max: |lambda| starts uniform on the ring r_min <= |lambda| <= r_max (in area).
        max_phase: arg(lambda) starts uniform in [0, max_phase].
        impl: op implementation passed to `core.ops.linear_scan` ("naive", "chunk", None = auto).

    B (real and imaginary parts ~ N(0, 1/(2 d_model))) is one real linear map d_model -> 2N, and
    Re(C x) = [C_re, -C_im] [Re x; Im x] one real map 2N -> d_model (parts ~ N(0, 1/N)); D ~ N(0, 1).
    nu_log, theta_log and gamma_log are marked `_no_weight_decay`.
    State: `RecurrentState(recurrent (B, N) complex64 (complex128 for float64 inputs))`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        N = d_model if d_state is None else d_state
        check_positive_int("lru", "d_state", N)
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"lru: need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if max_phase <= 0:
            raise ValueError(f"lru: max_phase must be > 0, got {max_phase}")
        self.d_state, self.impl = N, impl
        u1, u2 = torch.rand(N), torch.rand(N)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * self.nu_log.detach().exp())))  # log sqrt(1 - |lambda|^2)
        for p in (self.nu_log, self.theta_log, self.gamma_log):
            p._no_weight_decay = True
        self.B = nn.Linear(d_model, 2 * N, bias=False)
        self.C = nn.Linear(2 * N, d_model, bias=False)
        nn.init.normal_(self.B.weight, std=(2 * d_model) ** -0.5)
        nn.init.normal_(self.C.weight, std=N**-0.5)
        self.D = nn.Parameter(torch.randn(d_model))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("lru", state, RecurrentState)
        dtype = gate_dtype(x)
        nu, theta, gamma = (p.to(dtype) for p in (self.nu_log, self.theta_log, self.gamma_log))
        lam = torch.polar((-nu.exp()).exp(), theta.exp())  # [N] complex
        Bu = self.B(x).to(dtype).unflatten(-1, (2, -1)) * gamma.exp()  # [B, T, 2, N]
        a, b = lam.expand(*x.shape[:2], -1), torch.complex(Bu[..., 0, :], Bu[..., 1, :])
        h, final = scan(a, b, None if state is None else state.recurrent, mask, impl=self.impl)
        y = self.C(torch.cat([h.real, h.imag], dim=-1).to(x.dtype))
        return y + self.D.to(x.dtype) * x, RecurrentState(final)
