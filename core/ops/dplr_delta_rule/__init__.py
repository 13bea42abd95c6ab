"""Delta rule with a diagonal-plus-low-rank transition (RWKV-7, the generalised delta rule); see README.md.

Implementations register under the op name "dplr_delta_rule" (`core.ops.dispatch.register`) and take
`(q, k, v, a, b, g, scale, initial_state, output_final_state)` with scale a float and no cu_seqlens
(packed inputs arrive unpacked). They return `(o, final_state or None)` with o in the input dtype and
the state in `state_dtype`.
"""

from torch import Tensor

from core.ops.checks import check_cu_seqlens, check_per_token, check_qkv, check_state
from core.ops.dispatch import resolve
from core.ops.dplr_delta_rule import chunk, naive  # noqa: F401  (they register themselves)
from core.ops.varlen import call_unpacked

__all__ = ["dplr_delta_rule"]


def dplr_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = (Diag(exp(g_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T and o_t = S_t^T (scale q_t).

    q, k, a, b: (B, T, H, K); v: (B, T, H, V); g: log decay <= 0 per key channel, (B, T, H, K), scaling
    the rows of S. a reads the old state (nu_t = a_t^T S_{t-1}), b writes nu_t back; RWKV-7 uses
    a = -kappa, b = kappa * eta with L2-normalised kappa and scale = 1. scale defaults to K ** -0.5.
    initial_state: (B, H, K, V), or (N, H, K, V) with cu_seqlens (N + 1,) for N sequences packed into
    B = 1. impl: "naive", "chunk", ... or None for the best one on the inputs' device.
    Padding: a token with k = 0, b = 0 (or a = 0) and g = 0 leaves the state unchanged.
    Returns o (B, T, H, V) in the input dtype and, if output_final_state, the final state
    (B or N, H, K, V) in float32 (float64 for float64 inputs), else None.
    """
    B, T, H, K, V = check_qkv(q, k, v)
    for name, x in (("a", a), ("b", b), ("g", g)):
        check_per_token(name, x, (B, T, H, K), "(B, T, H, K) as q", q.device)
    n_states = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_state("initial_state", initial_state, (n_states, H, K, V), "(N, H, K, V)", q.device)
    fn = resolve("dplr_delta_rule", impl, q.device)
    scale = K**-0.5 if scale is None else scale
    if cu_seqlens is None:
        return fn(q, k, v, a, b, g, scale, initial_state, output_final_state)
    return call_unpacked(fn, cu_seqlens, (q, k, v, a, b, g), scale, initial_state, output_final_state)
