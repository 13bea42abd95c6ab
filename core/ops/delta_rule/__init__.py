"""Delta rule, gated delta rule and DeltaProduct (DeltaNet, Gated DeltaNet, DeltaProduct); see README.md.

Implementations register under the op name "delta_rule" (`core.ops.dispatch.register`) and take
normalised arguments `(q, k, v, beta, g, scale, initial_state, output_final_state)`: g is a tensor
(zeros stand for "no decay"), scale a float, no cu_seqlens (packed inputs arrive unpacked). They
return `(o, final_state or None)` with o in the input dtype and the state in `state_dtype`.
"""

import torch
from torch import Tensor

from core.ops.checks import check_cu_seqlens, check_per_token, check_qkv, check_shape, check_state, state_dtype
from core.ops.delta_rule import chunk, naive  # noqa: F401  (they register themselves)
from core.ops.delta_rule import triton  # noqa: F401  (registers the Triton kernels, imported lazily on CUDA)
from core.ops.dispatch import resolve
from core.ops.varlen import call_unpacked

__all__ = ["delta_product", "delta_rule"]


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T (scale q_t).

    q, k: (B, T, H, K); v: (B, T, H, V); beta: (B, T, H), in [0, 1], or [0, 2] for negative
    eigenvalues (keys should then be L2-normalised, or the state can grow without bound); g: log
    decay <= 0 per head, (B, T, H), or None (DeltaNet); scale defaults to K ** -0.5.
    initial_state: (B, H, K, V), or (N, H, K, V) with cu_seqlens (N + 1,) for N sequences packed into
    B = 1. impl: "naive", "chunk", ... or None for the best one on the inputs' device.
    Padding: a token with k = 0 and g = 0 leaves the state unchanged (beta and v are then irrelevant).
    Returns o (B, T, H, V) in the input dtype and, if output_final_state, the final state
    (B or N, H, K, V) in float32 (float64 for float64 inputs), else None.
    """
    B, T, H, K, V = check_qkv(q, k, v)
    check_per_token("beta", beta, (B, T, H), "(B, T, H)", q.device, "One step size per token and head.")
    if g is not None:
        check_per_token("g", g, (B, T, H), "(B, T, H)", q.device, "The delta rule takes one log decay per head.")
    n_states = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_state("initial_state", initial_state, (n_states, H, K, V), "(N, H, K, V)", q.device)
    fn = resolve("delta_rule", impl, q.device)
    scale = K**-0.5 if scale is None else scale
    g = q.new_zeros(B, T, H, dtype=state_dtype(q.dtype)) if g is None else g
    if cu_seqlens is None:
        return fn(q, k, v, beta, g, scale, initial_state, output_final_state)
    return call_unpacked(fn, cu_seqlens, (q, k, v, beta, g), scale, initial_state, output_final_state)


def delta_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """DeltaProduct: S <- exp(g_t) S, then for j = 1..n_h: S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T;
    o_t = S^T (scale q_t).

    q: (B, T, H, K); k: (B, T, n_h, H, K); v: (B, T, n_h, H, V); beta: (B, T, n_h, H); g: (B, T, H) or
    None. Sub-token (t, j) becomes token t * n_h + j of `delta_rule`: it carries g_t at j = 0 (else 0)
    and q_t at j = n_h - 1 (else 0), where o_t is read. The other arguments and the result are those
    of `delta_rule` (cu_seqlens counts tokens, not sub-tokens).
    """
    check_shape("q", q, (None,) * 4, "(B, T, H, K)", "DeltaProduct takes one query per token.")
    B, T, H, K = q.shape
    check_shape("k", k, (B, T, None, H, K), "(B, T, n_h, H, K) with B, T, H, K as q", "Stack a token's keys in dim 2.")
    n_h = k.shape[2]
    if n_h == 0:
        raise ValueError(f"k has shape {tuple(k.shape)}: n_h = 0 steps per token; DeltaProduct needs n_h >= 1 keys per token")
    check_shape("v", v, (B, T, n_h, H, None), "(B, T, n_h, H, V) with B, T, n_h, H as k")
    check_shape("beta", beta, (B, T, n_h, H), "(B, T, n_h, H) with B, T, n_h, H as k")
    if g is not None:
        check_shape("g", g, (B, T, H), "(B, T, H)", "DeltaProduct takes one log decay per token and head.")
    q_sub = torch.cat([q.new_zeros(B, T, n_h - 1, H, K), q.unsqueeze(2)], dim=2)
    g_sub = None if g is None else torch.cat([g.unsqueeze(2), g.new_zeros(B, T, n_h - 1, H)], dim=2).flatten(1, 2)
    o, final_state = delta_rule(
        q_sub.flatten(1, 2),
        k.flatten(1, 2),
        v.flatten(1, 2),
        beta.flatten(1, 2),
        g_sub,
        scale=K**-0.5 if scale is None else scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens * n_h,
        impl=impl,
    )
    return o.unflatten(1, (T, n_h))[:, :, -1], final_state
