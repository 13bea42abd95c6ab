"""Primitives shared by the chunked delta-rule forms (`delta_rule`, `dplr_delta_rule`).

Tensors inside a chunked form are laid out [B, H, N, C, D]: N chunks of C tokens. Cumulative log
decays are chunk-local (spec section 0) and every exponent is masked or arranged to be <= 0 before
exp, so nothing overflows.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def to_chunks(x: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """[B, T, H, D] -> [B, H, N, C, D] in `dtype`, T zero-padded to N * C (zeros are inert padding)."""
    x = F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, -x.shape[1] % C))  # [B, H, N * C, D]
    return x.contiguous().unflatten(2, (-1, C))


def from_chunks(x: Tensor, T: int) -> Tensor:
    """[B, H, N, C, D] -> [B, T, H, D], dropping the padded tail."""
    return x.flatten(2, 3)[:, :, :T].transpose(1, 2)


def scalar_decay(gamma: Tensor) -> Tensor:
    """Gamma_rj = exp(gamma_r - gamma_j) for j <= r, else 0: [.., C, 1] -> [.., C, C]."""
    C = gamma.shape[-2]
    mask = torch.ones(C, C, dtype=torch.bool, device=gamma.device).tril()
    return (gamma - gamma.transpose(-1, -2)).masked_fill(~mask, -math.inf).exp()


def vector_decay_scores(x: Tensor, y: Tensor, gamma_x: Tensor, gamma_y: Tensor, strict: bool) -> Tensor:
    """A_rj = sum_c x_rc y_jc exp(gamma_x_rc - gamma_y_jc) for j <= r (j < r if strict), else 0.

    x, gamma_x: [.., C, K] (rows r); y, gamma_y: [.., C, K] (columns j), broadcastable -> [.., C, C];
    C a power of two. gamma_y is a chunk-local cumulative log decay (non-increasing) and
    gamma_x_r <= gamma_y_{r-1}, as for gamma_x = gamma_y or its exclusive form gamma_y - g (then
    strict). By dyadic splitting (a hierarchical form of GLA's secondary chunking), the pair
    j < r is taken at the level where a block splits into a left half holding j and a right half
    holding r; with p the last row of the left half, exp(gamma_x_r - gamma_y_j) =
    exp(gamma_x_r - gamma_y_p) exp(gamma_y_p - gamma_y_j), two factors <= 1: each level is one matmul
    of rescaled rows, log2(C) levels in all. Any log decay is safe, however strong.
    """
    C = x.shape[-2]
    if strict:
        A = x.new_zeros(torch.broadcast_shapes(x.shape, y.shape)[:-1] + (C,))
    else:  # the pairs j = r, where gamma_x = gamma_y
        A = torch.diag_embed((x * y * (gamma_x - gamma_y).exp()).sum(-1))
    half = C // 2
    while half >= 1:
        xb, yb, gxb, gyb = (t.unflatten(-2, (C // (2 * half), 2, half)) for t in (x, y, gamma_x, gamma_y))
        ref = gyb[..., 0, -1:, :]  # [.., blocks, 1, K], gamma_y at p
        x_right = xb[..., 1, :, :] * (gxb[..., 1, :, :] - ref).exp()
        y_left = yb[..., 0, :, :] * (ref - gyb[..., 0, :, :]).exp()
        block = F.pad(x_right @ y_left.transpose(-1, -2), (0, half, half, 0))  # [.., blocks, 2 half, 2 half]
        A = A + torch.diag_embed(block.movedim(-3, -1), dim1=-4, dim2=-2).flatten(-4, -3).flatten(-2, -1)
        half //= 2
    return A


def solve_unit_lower(A: Tensor, rhs: Tensor) -> Tensor:
    """(I + A)^{-1} rhs for strictly lower-triangular A [.., C, C] and rhs [.., C, D] (forward substitution)."""
    return torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)


def delta_state_pass(
    u: Tensor,  # [B, H, N, C, V]
    w: Tensor,  # [B, H, N, C, K]
    k_out: Tensor,  # [B, H, N, C, K]
    decay: Tensor,  # [B, H, N, K or 1, 1], exp of the chunk's total log decay
    written: Tensor | None,  # [B, H, N, K, V], state written independently of S_[n]
    initial_state: Tensor | None,  # [B, H, K, V]
) -> tuple[Tensor, Tensor, Tensor]:
    """The sequential pass over chunks of the delta-rule forms.

    For n = 0..N-1: P_n = u_n + w_n S_[n] (pseudo-values), S_[n+1] = decay_n S_[n] + k_out_n^T P_n + written_n.
    Returns the states entering each chunk [B, H, N, K, V], the pseudo-values [B, H, N, C, V] and S_[N].
    """
    B, H, N, _, V = u.shape
    S = u.new_zeros(B, H, w.shape[-1], V) if initial_state is None else initial_state.to(u.dtype)
    states, pseudo = [], []
    for n in range(N):
        states.append(S)
        p = u[:, :, n] + w[:, :, n] @ S  # [B, H, C, V]
        S = decay[:, :, n] * S + k_out[:, :, n].transpose(-1, -2) @ p
        if written is not None:
            S = S + written[:, :, n]
        pseudo.append(p)
    return torch.stack(states, dim=2), torch.stack(pseudo, dim=2), S
