"""Prefix softmax attention: one fixed query attending over every prefix, as an RNN (Aaren, spec 9).

Implementations register under the op name "prefix_attention" (`core.ops.dispatch.register`) and
take `(s, v, initial_state, output_final_state)` with initial_state a tuple (m, u, w) or None. They
return `(o, (m, u, w) or None)` with o in v's dtype and the state in `state_dtype`.
"""

from typing import NamedTuple

from torch import Tensor

from core.ops.checks import check_float, check_per_token, check_shape, check_state_tuple
from core.ops.dispatch import resolve
from core.ops.prefix_attention import chunk, naive  # noqa: F401  (they register themselves)

__all__ = ["PrefixAttentionState", "prefix_attention"]


class PrefixAttentionState(NamedTuple):
    """Softmax statistics of the tokens seen so far, float32 (float64 for float64 inputs).

    m: (B, H) running max of the scores (-inf before any token); u: (B, H) sum of e^{s - m};
    w: (B, H, V) sum of e^{s - m} v. The output so far is w / u; memory is O(1) in the length.
    """

    m: Tensor
    u: Tensor
    w: Tensor


def prefix_attention(
    s: Tensor,
    v: Tensor,
    *,
    initial_state: PrefixAttentionState | tuple[Tensor, Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    impl: str | None = None,
) -> tuple[Tensor, PrefixAttentionState | None]:
    """o_t = sum_{i<=t} softmax(s_1..s_t)_i v_i per batch and head (and over the state's earlier tokens).

    s: (B, T, H) attention scores, e.g. q_h . k_t / sqrt(K) for a fixed query q_h; -inf marks an absent
    (padded) token, which changes nothing. v: (B, T, H, V). impl: "naive" (the streaming loop),
    "chunk" (cumulative logsumexp + chunked linear recurrence) or None for the best on the device.
    Returns o (B, T, H, V) in v's dtype (0 before any token) and, if output_final_state, the final
    `PrefixAttentionState`.
    """
    check_float("v", v)
    check_shape("v", v, (None,) * 4, "(B, T, H, V)", "Split the heads out first: x.view(B, T, H, head_dim).")
    B, T, H, V = v.shape
    if T == 0:
        raise ValueError("the sequence length T of s and v is 0; pass at least one token")
    check_per_token("s", s, (B, T, H), "(B, T, H)", v.device, "Scores hold one value per token and head.")
    shapes = {"m": ((B, H), "(B, H)"), "u": ((B, H), "(B, H)"), "w": ((B, H, V), "(B, H, V)")}
    check_state_tuple("initial_state", initial_state, shapes, v.device)
    o, final = resolve("prefix_attention", impl, v.device)(s, v, initial_state, output_final_state)
    return o, (None if final is None else PrefixAttentionState(*final))
