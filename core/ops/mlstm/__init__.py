"""mLSTM: the matrix-memory recurrence of xLSTM with exponential input gates and a max-stabiliser (spec 6).

Implementations register under the op name "mlstm" (`core.ops.dispatch.register`) and take
normalised arguments `(q, k, v, i, log_f, scale, initial_state, output_final_state, eps)`: log_f is
the activated log forget gate, initial_state a tuple (C, n, m) or None. They return
`(h, (C, n, m) or None)` with h in the input dtype and the state in `state_dtype`.
"""

import math
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import check_mask, check_per_token, check_qkv, check_state_tuple, state_dtype
from core.ops.dispatch import resolve
from core.ops.mlstm import chunk, naive  # noqa: F401  (they register themselves)

__all__ = ["FORGET_GATES", "MLSTMState", "mlstm", "neutral_gates"]

FORGET_GATES = ("sigmoid", "exp")


class MLSTMState(NamedTuple):
    """Stabilised mLSTM memory, float32 (float64 for float64 inputs).

    C: (B, H, K, V) matrix memory, n: (B, H, K) normaliser, m: (B, H) log stabiliser; the unstabilised
    memory is exp(m) * C. The start of a sequence is C = 0, n = 0, m = 0.
    """

    C: Tensor
    n: Tensor
    m: Tensor


def mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    *,
    scale: float | None = None,
    forget_gate: str = "sigmoid",
    initial_state: MLSTMState | tuple[Tensor, Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    eps: float = 1e-6,
    impl: str | None = None,
) -> tuple[Tensor, MLSTMState | None]:
    """Stabilised mLSTM; per head, with log i_t = i_t and log f_t = logsigmoid(f_t) ("sigmoid") or f_t ("exp"):

        m_t = max(log f_t + m_{t-1}, i_t),  f' = exp(log f_t + m_{t-1} - m_t),  i' = exp(i_t - m_t)
        C_t = f' C_{t-1} + i' k_t v_t^T,  n_t = f' n_{t-1} + i' k_t
        h_t = C_t^T (s q_t) / (max(|n_t^T (s q_t)|, exp(-m_t)) + eps)

    q, k: (B, T, H, K); v: (B, T, H, V); i, f: (B, T, H) gate pre-activations; scale s defaults to
    K ** -0.5. A token with i = -inf and log f = 0 is absent (see `neutral_gates`).
    impl: "naive", "chunk", ... or None for the best one on the inputs' device.
    Returns h (B, T, H, V) in the input dtype and, if output_final_state, the final `MLSTMState`.
    """
    B, T, H, K, V = check_qkv(q, k, v)
    for name, gate in (("i", i), ("f", f)):
        check_per_token(name, gate, (B, T, H), "(B, T, H)", q.device, "Gates hold one pre-activation per token and head.")
    _check_forget_gate(forget_gate)
    if not eps >= 0:
        raise ValueError(f"mlstm: eps must be >= 0, got {eps}")
    shapes = {"C": ((B, H, K, V), "(B, H, K, V)"), "n": ((B, H, K), "(B, H, K)"), "m": ((B, H), "(B, H)")}
    check_state_tuple("initial_state", initial_state, shapes, q.device)
    fn = resolve("mlstm", impl, q.device)
    dtype = state_dtype(q.dtype)
    log_f = F.logsigmoid(f.to(dtype)) if forget_gate == "sigmoid" else f.to(dtype)
    h, final = fn(q, k, v, i.to(dtype), log_f, K**-0.5 if scale is None else scale, initial_state, output_final_state, eps)
    return h, (None if final is None else MLSTMState(*final))


def neutral_gates(i: Tensor, f: Tensor, mask: Tensor, forget_gate: str = "sigmoid") -> tuple[Tensor, Tensor]:
    """Make padded tokens (mask (B, T) False) absent: i = -inf (no input) and log f = 0 (no forgetting).

    i, f: (B, T, H) pre-activations; f becomes +inf for the sigmoid gate (logsigmoid(inf) = 0), 0 for exp.
    """
    _check_forget_gate(forget_gate)
    check_mask(mask, *i.shape[:2])
    pad = ~mask[..., None]
    return i.masked_fill(pad, -math.inf), f.masked_fill(pad, math.inf if forget_gate == "sigmoid" else 0.0)


def _check_forget_gate(forget_gate: str) -> None:
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
