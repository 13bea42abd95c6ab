"""Chunked (gated) delta rule in the WY / UT-transform form (spec 2.2): the CPU fast path and the kernels' oracle.

Inside a chunk, the pseudo-values U~ = U - W S_[n] come from one unit-lower-triangular solve; a loop
over chunks carries the state. The scalar decay's factors exp(gamma_r - gamma_j) are all <= 1.
"""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.chunking import delta_state_pass, from_chunks, scalar_decay, solve_unit_lower, to_chunks
from core.ops.dispatch import register

CHUNK_SIZE = 64


@register("delta_rule", "chunk", priority=1)
def chunk_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    beta: Tensor,  # [B, T, H]
    g: Tensor,  # [B, T, H], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `naive_delta_rule`."""
    T, K = q.shape[1], q.shape[-1]
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    C = min(chunk_size, T)
    q, k, v = (to_chunks(x, C, dtype) for x in (q, k, v))  # [B, H, N, C, ·]
    beta, g = (to_chunks(x[..., None], C, dtype) for x in (beta, g))  # [B, H, N, C, 1]
    gamma = g.cumsum(-2)  # chunk-local inclusive cumulative log decay
    decay = scalar_decay(gamma)  # [B, H, N, C, C], Gamma with its diagonal
    A = (beta * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    w, u = solve_unit_lower(A, beta * torch.cat([k * gamma.exp(), v], dim=-1)).split([K, v.shape[-1]], dim=-1)
    total = gamma[..., -1:, :]  # [B, H, N, 1, 1]
    states, u_new, final = delta_state_pass(u, -w, k * (total - gamma).exp(), total.exp(), None, initial_state)
    q = q * scale
    o = (q * gamma.exp()) @ states + (q @ k.transpose(-1, -2) * decay) @ u_new  # [B, H, N, C, V]
    return from_chunks(o, T).to(out_dtype), (final if output_final_state else None)
