"""Token-by-token stabilised mLSTM (spec 6.1): the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register

Cell = tuple[Tensor, Tensor, Tensor]  # C [B, H, K, V], n [B, H, K], m [B, H]


@register("mlstm", "naive")
def naive_mlstm(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    i: Tensor,  # [B, T, H], log input gate (pre-activation)
    log_f: Tensor,  # [B, T, H], log forget gate
    scale: float,
    initial_state: Cell | None,
    output_final_state: bool,
    eps: float,
) -> tuple[Tensor, Cell | None]:
    """m_t = max(log f_t + m_{t-1}, i_t); C_t = f' C_{t-1} + i' k_t v_t^T; n_t = f' n_{t-1} + i' k_t;
    h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps) with q scaled; returns h [B, T, H, V] and (C, n, m)."""
    B, T, H, K = q.shape
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v, i, log_f = (x.to(dtype) for x in (q, k, v, i, log_f))
    q = q * scale
    if initial_state is None:
        C, n, m = q.new_zeros(B, H, K, v.shape[-1]), q.new_zeros(B, H, K), q.new_zeros(B, H)
    else:
        C, n, m = (x.to(dtype) for x in initial_state)
    outputs = []
    for t in range(T):
        m_new = torch.maximum(log_f[:, t] + m, i[:, t])
        f_t = (log_f[:, t] + m - m_new).exp()[..., None]  # [B, H, 1]
        i_t = (i[:, t] - m_new).exp()[..., None]
        C = f_t[..., None] * C + (i_t * k[:, t])[..., None] * v[:, t, :, None, :]
        n = f_t * n + i_t * k[:, t]
        m = m_new
        num = (q[:, t, :, None, :] @ C)[..., 0, :]  # [B, H, V]
        den = (n * q[:, t]).sum(-1)  # [B, H]
        outputs.append(num / (torch.maximum(den.abs(), (-m).exp()) + eps)[..., None])
    h = torch.stack(outputs, dim=1)  # [B, T, H, V]
    return h.to(out_dtype), ((C, n, m) if output_final_state else None)
