"""Forgetting attention with the whole (T, S) logit matrix materialised: the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register


def causal_allowed(T: int, S: int, device: torch.device) -> Tensor:
    """(T, S) bool, True where query i may see key j: j <= i + S - T (the T queries are the last T keys)."""
    return torch.arange(S, device=device) <= torch.arange(T, device=device)[:, None] + (S - T)


@register("forgetting_attention", "naive")
def naive_forgetting_attention(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, S, H, K], S >= T: earlier (cached) keys, then the T keys of the queries
    v: Tensor,  # [B, S, H, V]
    cq: Tensor,  # [B, T, H] float64, cumulative log forget gate at each query
    ck: Tensor,  # [B, S, H] float64, cumulative log forget gate at each key
    key_valid: Tensor | None,  # [B, S] bool, False = absent key; None = all present
    scale: float,
) -> Tensor:
    """o_i = sum_j softmax_j(scale q_i . k_j + cq_i - ck_j) v_j over the allowed keys (causal and present).

    A query without any allowed key gets o = 0. Returns o [B, T, H, V] in q's dtype.
    """
    T, S = q.shape[1], k.shape[1]
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    decay = (cq.transpose(1, 2)[..., None] - ck.transpose(1, 2)[..., None, :]).to(dtype)  # [B, H, T, S], D_ij
    logits = scale * torch.einsum("bthk,bshk->bhts", q, k) + decay
    allowed = causal_allowed(T, S, q.device)  # [T, S]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]  # [B, 1, T, S]
    empty = ~allowed.any(-1, keepdim=True)  # rows without any key: softmax over nothing
    logits = logits.masked_fill(~allowed, -torch.inf).masked_fill(empty, 0)
    weights = logits.softmax(-1).masked_fill(empty, 0)  # [B, H, T, S]
    return torch.einsum("bhts,bshv->bthv", weights, v).to(out_dtype)
