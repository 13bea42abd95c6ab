"""Forgetting attention: softmax attention with cumulative log forget gates added to the logits (FoX, spec 4); see README.md.

Implementations register under the op name "forgetting_attention" (`core.ops.dispatch.register`) and
take `(q, k, v, cq, ck, key_valid, scale)`: the T queries are the last T of the S >= T keys (earlier
keys come from the cache), cq (B, T, H) and ck (B, S, H) the cumulative log forget gates at the
queries and keys in float64, key_valid (B, S) bool or None. The sums reach |c| ~ 1e4 in a long
sequence, where float32 would blur the differences c_i - c_j that enter the logits by ~1e-3;
in float64 they are exact to ~1e-12 and only O(T) numbers are kept that way. They return o (B, T, H, V) in q's dtype. The cache,
the padding mask and `cu_seqlens` are handled here, once, for every implementation.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from core.ops.checks import check_cu_seqlens, check_device, check_mask, check_per_token, check_qkv, check_shape, state_dtype
from core.ops.dispatch import resolve
from core.ops.forgetting_attention import chunk, naive  # noqa: F401  (they register themselves)
from core.ops.varlen import cu_seqlens_to_mask, pack, unpack

__all__ = ["ForgettingAttentionState", "forgetting_attention"]


class ForgettingAttentionState(NamedTuple):
    """KV cache of forgetting attention: every token seen so far (S of them), absent ones flagged.

    keys: (B, S, H, K), values: (B, S, H, V), in the inputs' dtype.
    log_decay: (B, S, H) float32 (float64 for float64 inputs): the sum of log f over the tokens after
        key j up to the last token seen (<= 0; 0 for the newest), i.e. c_t - c_j relative to the end of
        the cache, so the values stay small however long the sequence.
    valid: (B, S) bool, False for absent (padded) tokens.
    """

    keys: Tensor
    values: Tensor
    log_decay: Tensor
    valid: Tensor


def forgetting_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_f: Tensor,
    *,
    scale: float | None = None,
    mask: Tensor | None = None,
    initial_state: ForgettingAttentionState | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, ForgettingAttentionState | None]:
    """o_i = sum_{j<=i} softmax_j(scale q_i . k_j + c_i - c_j) v_j with c_t = sum_{l<=t} log f_l, per head.

    q, k: (B, T, H, K); v: (B, T, H, V); log_f: (B, T, H) log forget gates <= 0 (e.g. logsigmoid of a
    logit); scale defaults to K ** -0.5. mask: (B, T) bool, False = absent token (it is neither attended
    to nor forgets; its own output is 0). initial_state: the cache of the earlier tokens, continued
    exactly. cu_seqlens: (N + 1,) offsets of N sequences packed into B = 1 (then the state has N rows).
    impl: "naive" (materialises the (T, S) logits), "chunk" (tiles with an online softmax) or None for
    the best one on the device. Returns o (B, T, H, V) in q's dtype (0 where no key is visible) and, if
    output_final_state, the `ForgettingAttentionState` after the last token.
    """
    B, T, H, K, V = check_qkv(q, k, v)
    check_per_token("log_f", log_f, (B, T, H), "(B, T, H)", q.device, "The forget gate holds one value per token and head.")
    if mask is not None:
        check_mask(mask, B, T)
        check_device("mask", mask, q.device)
    fn = resolve("forgetting_attention", impl, q.device)
    scale = K**-0.5 if scale is None else scale
    if cu_seqlens is None:
        _check_cache(initial_state, B, H, K, V, q.device)
        return _attend(fn, q, k, v, log_f, mask, scale, initial_state, output_final_state)
    if mask is not None:
        raise ValueError("pass either mask (a padded batch) or cu_seqlens (a packed batch), not both")
    N = check_cu_seqlens(cu_seqlens, B, T)
    _check_cache(initial_state, N, H, K, V, q.device)
    padded = cu_seqlens_to_mask(cu_seqlens)  # [N, Tmax]
    o, final = _attend(fn, *(unpack(x, padded) for x in (q, k, v, log_f)), padded, scale, initial_state, output_final_state)
    return pack(o, padded), final


def _attend(
    fn, q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, mask: Tensor | None, scale: float,
    cache: ForgettingAttentionState | None, output_final_state: bool,
) -> tuple[Tensor, ForgettingAttentionState | None]:
    """Prepend the cache to the keys, run the implementation `fn`, append the new tokens to the cache."""
    B, T = q.shape[:2]
    log_f = log_f.to(torch.float64)
    if mask is not None:
        log_f = log_f.masked_fill(~mask[..., None], 0)  # an absent token forgets nothing
    c = log_f.cumsum(1)  # [B, T, H], 0 just before the first new token
    keys, values, ck, key_valid = k, v, c, mask
    if cache is not None:  # cached key j sits at c_j = -log_decay_j >= 0 relative to the cache's end
        keys = torch.cat([cache.keys.to(k.dtype), k], dim=1)
        values = torch.cat([cache.values.to(v.dtype), v], dim=1)
        ck = torch.cat([-cache.log_decay.to(c.dtype), c], dim=1)
        new_valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask
        key_valid = torch.cat([cache.valid, new_valid], dim=1)
    o = fn(q, keys, values, c, ck, key_valid, scale)
    if mask is not None:
        o = o.masked_fill(~mask[..., None, None], 0)
    if not output_final_state:
        return o, None
    if key_valid is None:
        key_valid = torch.ones(keys.shape[:2], dtype=torch.bool, device=q.device)
    return o, ForgettingAttentionState(keys, values, (c[:, -1:] - ck).to(state_dtype(q.dtype)), key_valid)


def _check_cache(cache: ForgettingAttentionState | None, B: int, H: int, K: int, V: int, device: torch.device) -> None:
    if cache is None:
        return
    if not isinstance(cache, ForgettingAttentionState):
        raise TypeError(
            f"initial_state must be the ForgettingAttentionState returned by a previous call, got {type(cache).__name__}"
        )
    S = cache.keys.shape[1] if cache.keys.dim() == 4 else None
    fields = {
        "keys": ((B, S, H, K), "(B, S, H, K)"),
        "values": ((B, S, H, V), "(B, S, H, V)"),
        "log_decay": ((B, S, H), "(B, S, H)"),
        "valid": ((B, S), "(B, S)"),
    }
    for name, (shape, layout) in fields.items():
        x = getattr(cache, name)
        check_shape(f"initial_state.{name}", x, shape, layout, "With cu_seqlens there is one cache row per sequence.")
        check_device(f"initial_state.{name}", x, device)
    if cache.valid.dtype != torch.bool:
        raise TypeError(f"initial_state.valid must be a bool tensor, got {cache.valid.dtype}")
    for name in ("keys", "values", "log_decay"):
        if not getattr(cache, name).is_floating_point():
            raise TypeError(f"initial_state.{name} must be a floating-point tensor, got {getattr(cache, name).dtype}")
