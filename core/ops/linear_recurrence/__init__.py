"""Linear recurrence with decay (GLA, Simple GLA, RetNet, Mamba-2 SSD, linear attention); see README.md.

Implementations register under the op name "linear_recurrence" (`core.ops.dispatch.register`) and
take normalised arguments `(q, k, v, g, scale, initial_state, output_final_state)`: g is a tensor
(zeros stand for "no decay"), scale a float, no cu_seqlens (packed inputs arrive unpacked). They
return `(o, final_state or None)` with o in the input dtype and the state in `state_dtype`.
"""

from torch import Tensor

from core.ops.checks import check_cu_seqlens, check_gate, check_qkv, check_state, state_dtype
from core.ops.dispatch import resolve
from core.ops.linear_recurrence import chunk, naive  # noqa: F401  (they register themselves)
from core.ops.linear_recurrence import triton  # noqa: F401  (registers the Triton kernels, imported lazily on CUDA)
from core.ops.varlen import call_unpacked


def linear_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T and o_t = S_t^T (scale q_t), read after the update.

    q, k: (B, T, H, K); v: (B, T, H, V); g: log decay <= 0, None (no decay), (B, T, H) (one per head)
    or (B, T, H, K) (one per key channel, scaling the rows of S); scale defaults to K ** -0.5.
    initial_state: (B, H, K, V), or (N, H, K, V) with cu_seqlens (N + 1,) for N sequences packed into
    B = 1. impl: "naive", "chunk", ... or None for the best one on the inputs' device.
    Returns o (B, T, H, V) in the input dtype and, if output_final_state, the final state
    (B or N, H, K, V) in float32 (float64 for float64 inputs), else None.
    """
    B, T, H, K, V = check_qkv(q, k, v)
    check_gate(g, q)
    n_states = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_state("initial_state", initial_state, (n_states, H, K, V), "(N, H, K, V)", q.device)
    fn = resolve("linear_recurrence", impl, q.device)
    scale = K**-0.5 if scale is None else scale
    g = q.new_zeros(B, T, H, dtype=state_dtype(q.dtype)) if g is None else g
    if cu_seqlens is None:
        return fn(q, k, v, g, scale, initial_state, output_final_state)
    return call_unpacked(fn, cu_seqlens, (q, k, v, g), scale, initial_state, output_final_state)  # zero k, g are inert
