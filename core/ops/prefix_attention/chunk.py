"""Prefix softmax attention in parallel: a cumulative logsumexp plus a K = 1 linear recurrence (spec 9.4).

With lambda_t = log sum_{i<=t} e^{s_i}, the output is an exponential moving average,
o_t = e^{lambda_{t-1} - lambda_t} o_{t-1} + e^{s_t - lambda_t} v_t, whose log decay
-softplus(s_t - lambda_{t-1}) <= 0 and weight sigmoid(s_t - lambda_{t-1}) come from the cumulative
logsumexp; `core.ops.linear_recurrence` (chunked) runs the average. -inf never meets -inf: an absent
token (s = -inf) gets weight 0 and decay 0, the first token (nothing before it) weight 1.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register
from core.ops.linear_recurrence import linear_recurrence
from core.ops.prefix_attention.naive import Triple


@register("prefix_attention", "chunk", priority=1)
def chunk_prefix_attention(
    s: Tensor,  # [B, T, H]
    v: Tensor,  # [B, T, H, V]
    initial_state: Triple | None,
    output_final_state: bool,
) -> tuple[Tensor, Triple | None]:
    """Same contract as `naive_prefix_attention`."""
    B, T, H, V = v.shape
    dtype = state_dtype(v.dtype)
    s = s.to(dtype)
    absent = s.isneginf()
    if initial_state is None:
        m0, u0, w0 = s.new_full((B, H), -torch.inf), s.new_zeros(B, H), s.new_zeros(B, H, V)
    else:
        m0, u0, w0 = (x.to(dtype) for x in initial_state)
    started = u0 > 0  # [B, H], the state holds at least one token
    u0 = torch.where(started, u0, 1)
    lam0 = torch.where(started, torch.where(started, m0, 0) + u0.log(), 0)  # log-normaliser, 0 where unused
    # logcumsumexp's gradient is NaN at -inf inputs; masked_fill drops it there (the true gradient is 0)
    lcse = torch.logcumsumexp(s.masked_fill(absent, -torch.inf), dim=1)  # [B, T, H]
    lam = torch.where(started[:, None], torch.logaddexp(lam0[:, None], lcse), lcse)
    lam_prev = torch.cat([torch.where(started, lam0, -torch.inf)[:, None], lam[:, :-1]], dim=1)
    empty = lam_prev.isneginf()  # no token before t
    d = torch.where(absent, 0, s) - torch.where(empty, 0, lam_prev)
    g = torch.where(absent | empty, 0, -F.softplus(d))
    weight = torch.where(absent, 0, torch.where(empty, 1, torch.sigmoid(d)))
    o0 = (w0 / u0[..., None])[:, :, None, :]  # [B, H, 1, V], the output after the state's tokens
    ones = s.new_ones(B, T, H, 1)
    o, o_T = linear_recurrence(ones, weight[..., None], v.to(dtype), g, scale=1.0, initial_state=o0, output_final_state=True)
    if not output_final_state:
        return o.to(v.dtype), None
    m = torch.maximum(m0, s.amax(1))  # running max, -inf while empty
    lam_T = lam[:, -1]
    seen = ~lam_T.isneginf()
    u = torch.where(seen, (torch.where(seen, lam_T, 0) - torch.where(seen, m, 0)).exp(), 0)
    return o.to(v.dtype), (m, u, u[..., None] * o_T[:, :, 0])
