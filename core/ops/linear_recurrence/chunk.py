"""Chunked parallel linear recurrence in plain PyTorch: the CPU fast path and the oracle for kernels.

The sequence is cut into chunks of C tokens (spec section 1). Inside a chunk the outputs come from
matmuls with chunk-local cumulative log decays; a loop over chunks carries the state between them.
Every exponent is masked or arranged to be <= 0 before exp, so nothing overflows.
"""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.chunking import from_chunks, scalar_decay, to_chunks
from core.ops.dispatch import register

CHUNK_SIZE = 64  # a power of two: the vector-decay path may halve chunks down to single tokens
SAFE_SPREAD = 40.0  # exp(+-20) factors, and exp(40) in masked-out entries, stay far inside float32 range


@register("linear_recurrence", "chunk", priority=1)
def chunk_linear_recurrence(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    g: Tensor,  # [B, T, H] or [B, T, H, K], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `naive_linear_recurrence`; `chunk_size` must be a power of two."""
    T = q.shape[1]
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    C = min(chunk_size, 1 << (T - 1).bit_length())  # no need to pad a short sequence to a full chunk
    g = g if g.dim() == 4 else g[..., None]  # [B, T, H, K or 1]
    q, k, v, g = (to_chunks(x, C, dtype) for x in (q, k, v, g))  # [B, H, N, C, ·], zero padding is inert
    q = q * scale
    gamma = g.cumsum(-2)  # chunk-local inclusive cumulative log decay
    # A [B, H, N, C, C]: A_rj = sum_c Q_rc K_jc exp(gamma_rc - gamma_jc) for j <= r
    A = q @ k.transpose(-1, -2) * scalar_decay(gamma) if gamma.shape[-1] == 1 else _vector_scores(q, k, gamma)
    states, final = _state_pass(k, v, gamma, initial_state)  # [B, H, N, K, V], [B, H, K, V]
    o = A @ v + (q * gamma.exp()) @ states  # [B, H, N, C, V]
    return from_chunks(o, T).to(out_dtype), (final if output_final_state else None)


def _state_pass(k: Tensor, v: Tensor, gamma: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    """States entering each chunk [B, H, N, K, V] and the final state [B, H, K, V].

    S_[n+1] = Diag(exp(gamma_C)) S_[n] + (K * exp(gamma_C - gamma))^T V.
    """
    total = gamma[..., -1:, :]  # [B, H, N, 1, K or 1]
    written = (k * (total - gamma).exp()).transpose(-1, -2) @ v  # [B, H, N, K, V]
    decay = total.exp().transpose(-1, -2)  # [B, H, N, K or 1, 1]
    B, H, N, K, V = written.shape
    S = written.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(written.dtype)
    states = []
    for n in range(N):
        states.append(S)
        S = torch.addcmul(written[:, :, n], decay[:, :, n], S)  # decay * S + written
    return torch.stack(states, dim=2), S


def _vector_scores(q: Tensor, k: Tensor, gamma: Tensor) -> Tensor:
    """A [.., C, C], A_rj = sum_c Q_rc K_jc exp(gamma_rc - gamma_jc) for j <= r, for a decay per key channel.

    Not a plain matmul: (Q * e^gamma)(K * e^-gamma)^T overflows once gamma spans more than ~88.
    The chunk is cut into the largest blocks over which gamma falls by at most SAFE_SPREAD (a
    single token falls by 0). Pairs inside a block are factorised around the block's mid value,
    every exponent within +-SAFE_SPREAD / 2. The other pairs are taken level by level, doubling
    the blocks: pairs across the two halves of a block are factorised at the last row p of the
    left half, exp(gamma_r - gamma_j) = exp(gamma_r - gamma_p) * exp(gamma_p - gamma_j), both
    exponents <= 0. GLA-like gates need no split at all: then A is one masked matmul.
    """
    C = q.shape[-2]
    size = C
    while _spread(gamma, size) > SAFE_SPREAD:
        size //= 2
    qb, kb, gb = (x.unflatten(-2, (C // size, size)) for x in (q, k, gamma))  # [.., n, size, K]
    to_mid = (gb - (gb[..., :1, :] + gb[..., -1:, :]) / 2).exp()  # within exp(+-SAFE_SPREAD / 2)
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    scores = ((qb * to_mid) @ (kb / to_mid).transpose(-1, -2)).masked_fill(~causal, 0)  # [.., n, size, size]
    if size == C:
        return scores.squeeze(-3)
    A = q.new_zeros(*q.shape[:-2], C, C)
    _diagonal_blocks(A, size).copy_(scores.movedim(-3, -1))
    while size < C:
        qb, kb, gb = (x.unflatten(-2, (C // (2 * size), 2, size)) for x in (q, k, gamma))  # [.., n, left|right, size, K]
        ref = gb[..., 0, -1:, :]  # [.., n, 1, K], gamma_p
        q_right = qb[..., 1, :, :] * (gb[..., 1, :, :] - ref).exp()
        k_left = kb[..., 0, :, :] * (ref - gb[..., 0, :, :]).exp()
        _diagonal_blocks(A, 2 * size)[..., size:, :size, :].copy_((q_right @ k_left.transpose(-1, -2)).movedim(-3, -1))
        size *= 2
    return A


def _spread(gamma: Tensor, size: int) -> float:
    """Largest decrease of gamma [.., C, K] over a block of `size` rows."""
    blocks = gamma.unflatten(-2, (-1, size))  # [.., C // size, size, K]
    return (blocks[..., 0, :] - blocks[..., -1, :]).max().item()


def _diagonal_blocks(A: Tensor, size: int) -> Tensor:
    """The blocks of `size` rows and columns on the diagonal of A [.., C, C], as a view [.., size, size, C // size]."""
    n = A.shape[-1] // size
    return torch.diagonal(A.unflatten(-1, (n, size)).unflatten(-3, (n, size)), dim1=-4, dim2=-2)
