"""Chunked DPLR delta rule (spec 3.5): the CPU fast path and the kernels' oracle.

Inside a chunk, the pseudo-values nu_r = a_r^T S_{r-1} come from one unit-lower-triangular solve; a
loop over chunks carries the state. The decay is a vector, so the four score matrices are built by
dyadic splitting with every exponent <= 0 (`vector_decay_scores`), safe for any decay and chunk size.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.chunking import delta_state_pass, from_chunks, solve_unit_lower, to_chunks, vector_decay_scores
from core.ops.dispatch import register

CHUNK_SIZE = 32  # any power of two is exact and overflow-free; 32 balances the loop and the dyadic levels on CPU


@register("dplr_delta_rule", "chunk", priority=1)
def chunk_dplr_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    a: Tensor,  # [B, T, H, K]
    b: Tensor,  # [B, T, H, K]
    g: Tensor,  # [B, T, H, K], log decay per key channel
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `naive_dplr_delta_rule`; `chunk_size` must be a power of two."""
    T, K = q.shape[1], q.shape[-1]
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    C = min(chunk_size, 1 << (T - 1).bit_length())  # a power of two; a short sequence needs no full chunk
    q, k, v, a, b, g = (to_chunks(x, C, dtype) for x in (q, k, v, a, b, g))  # [B, H, N, C, ·]
    q = q * scale
    gamma = g.cumsum(-2)  # chunk-local inclusive cumulative log decay
    gamma_read = F.pad(gamma, (0, 0, 1, -1))  # exclusive cumulative sum: row r reads S_{r-1}
    kb = torch.stack([k, b])  # [2, B, H, N, C, K]
    A_qk, A_qb = vector_decay_scores(q, kb, gamma, gamma, strict=False)  # [B, H, N, C, C] each
    A_ak, A_ab = vector_decay_scores(a, kb, gamma_read, gamma, strict=True)
    u, w = solve_unit_lower(-A_ab, torch.cat([A_ak @ v, a * gamma_read.exp()], dim=-1)).split([v.shape[-1], K], dim=-1)
    total = gamma[..., -1:, :]  # [B, H, N, 1, K]
    to_end = (total - gamma).exp()  # [B, H, N, C, K]
    written = (k * to_end).transpose(-1, -2) @ v  # [B, H, N, K, V]
    states, nu, final = delta_state_pass(u, w, b * to_end, total.exp().transpose(-1, -2), written, initial_state)
    o = A_qk @ v + A_qb @ nu + (q * gamma.exp()) @ states  # [B, H, N, C, V]
    return from_chunks(o, T).to(out_dtype), (final if output_final_state else None)
