"""Chunkwise mLSTM carrying the max-stabiliser across chunks (spec 6.2, TFLA "chunkwise native").

Inside a chunk, b_r is the chunk-local cumulative log forget gate. A sequential pass over chunks
carries (C, n, m) with m the running stabiliser; the outputs of all chunks then come from matmuls
in parallel. Every exponent is a log weight minus a maximum over it, so it is <= 0 and nothing
overflows; m is the same as the token loop's, so the two agree including eps.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.chunking import from_chunks, to_chunks
from core.ops.dispatch import register
from core.ops.mlstm.naive import Cell

CHUNK_SIZE = 64


@register("mlstm", "chunk", priority=1)
def chunk_mlstm(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    i: Tensor,  # [B, T, H]
    log_f: Tensor,  # [B, T, H]
    scale: float,
    initial_state: Cell | None,
    output_final_state: bool,
    eps: float,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[Tensor, Cell | None]:
    """Same contract as `naive_mlstm`."""
    B, T, H, K = q.shape
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    L = min(chunk_size, T)
    q, k, v = (to_chunks(x, L, dtype) for x in (q, k, v))  # [B, H, N, L, ·]
    q = q * scale
    # padded steps are neutral: no input (i = -inf) and no forgetting (log f = 0)
    i = to_chunks(F.pad(i.to(dtype), (0, 0, 0, -T % L), value=-math.inf)[..., None], L, dtype)[..., 0]  # [B, H, N, L]
    b = to_chunks(log_f[..., None], L, dtype)[..., 0].cumsum(-1)  # [B, H, N, L]
    states = _chunk_states(k, v, i, b, initial_state)
    C, n, m = (x[:, :, :-1] for x in states)  # entering each chunk: [.., N, K, V], [.., N, K], [.., N]
    m_inter = b + m[..., None]  # [B, H, N, L], stabiliser of the carried state seen from row r
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_w = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~causal, -math.inf)  # [B, H, N, L, L]
    m_row = torch.maximum(m_inter, log_w.amax(-1))  # [B, H, N, L], the token loop's m_r
    scores = (q @ k.transpose(-1, -2)) * (log_w - m_row[..., None]).exp()  # [B, H, N, L, L]
    inter = (m_inter - m_row).exp()  # [B, H, N, L]
    num = scores @ v + inter[..., None] * (q @ C)
    den = scores.sum(-1) + inter * (q @ n[..., None])[..., 0]
    h = num / (torch.maximum(den.abs(), (-m_row).exp()) + eps)[..., None]
    final = tuple(x[:, :, -1] for x in states) if output_final_state else None
    return from_chunks(h, T).to(out_dtype), final


def _chunk_states(k: Tensor, v: Tensor, i: Tensor, b: Tensor, initial_state: Cell | None) -> tuple[Tensor, Tensor, Tensor]:
    """(C, n, m) entering chunks 0..N (the last is the final state): [B, H, N+1, K, V], [B, H, N+1, K], [B, H, N+1].

    a_j = b_L - b_j + i_j is the log weight of token j at the chunk's end; m' = max(b_L + m, max_j a_j).
    Each chunk's writes are summed in parallel against the local max A = max_j a_j, then rescaled.
    """
    B, H, N, L, K = k.shape
    total = b[..., -1]  # [B, H, N]
    a = total[..., None] - b + i  # [B, H, N, L]
    A = a.amax(-1)  # [B, H, N]; -inf for a chunk without input
    w = (a - torch.where(A.isneginf(), 0, A)[..., None]).exp()[..., None]  # [B, H, N, L, 1]
    C_written = (k * w).transpose(-1, -2) @ v  # [B, H, N, K, V]
    n_written = (k * w).sum(-2)  # [B, H, N, K]
    if initial_state is None:
        C, n, m = k.new_zeros(B, H, K, v.shape[-1]), k.new_zeros(B, H, K), k.new_zeros(B, H)
    else:
        C, n, m = (x.to(k.dtype) for x in initial_state)
    states = [(C, n, m)]
    for c in range(N):
        m_next = torch.maximum(total[:, :, c] + m, A[:, :, c])
        decay = (total[:, :, c] + m - m_next).exp()[..., None]  # [B, H, 1]
        inject = (A[:, :, c] - m_next).exp()[..., None]
        C = decay[..., None] * C + inject[..., None] * C_written[:, :, c]
        n = decay * n + inject * n_written[:, :, c]
        m = m_next
        states.append((C, n, m))
    return tuple(torch.stack(x, dim=2) for x in zip(*states))
