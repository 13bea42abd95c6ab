"""Softmax attention with RoPE, grouped-query heads, an optional sliding window with attention sinks and a
KV-cache state."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import check_nonnegative_int, check_positive_int
from core.registry import register_mixer
from core.rotary import apply_rotary


@dataclass
class KVCache:
    """State of causal attention: the tokens later queries may attend to.

    keys: (B, H_kv, S, D) keys of the cached tokens, RoPE already applied.
    values: (B, H_kv, S, D).
    valid: (B, S) bool, False for padded entries.
    positions: (B,) int64, valid tokens seen so far per sequence (the RoPE position of the next valid token).
    With a window the cache holds at most num_sinks + window - 1 entries: the sinks (the first num_sinks valid
    tokens) and the last window - 1 valid tokens of each sequence, in sequence order.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor
    positions: Tensor
    store: KVStore | None = field(default=None, repr=False, compare=False)  # spare room behind keys and values


class KVStore:
    """Key and value buffers with room to append in place (inference only): a KVCache's keys and values are views of
    their first `length` entries. Appending to the newest cache writes behind it (amortised O(new tokens), where
    concatenating copies the whole cache at every step); appending to an older cache of the same store (a branch)
    copies, so the newer one stays intact."""

    def __init__(self, keys: Tensor, values: Tensor, room: int) -> None:
        """A copy of keys and values (B, H_kv, S, D) with room for at least `room` more entries."""
        self.length = keys.shape[2]
        capacity = max(2 * (self.length + room), 64)
        self.keys = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
        self.values = values.new_empty(*values.shape[:2], capacity, values.shape[3])
        self.keys[:, :, : self.length], self.values[:, :, : self.length] = keys, values

    def holds(self, cache: KVCache) -> bool:
        """Whether cache's keys and values are this store's newest views (not a branch, not replaced tensors)."""
        return all(
            view.shape[2] == self.length and view.data_ptr() == buffer.data_ptr() and view.stride() == buffer.stride()
            for view, buffer in ((cache.keys, self.keys), (cache.values, self.values))
        )

    @staticmethod
    def append(past: KVCache, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, KVStore]:
        """(keys, values, store): past's keys and values followed by k and v (B, H_kv, T, D), and the store they
        are views of. Only without autograd: in-place writes would invalidate tensors saved for backward."""
        store, S, T = past.store, past.keys.shape[2], k.shape[2]
        if not (store is not None and store.holds(past) and store.keys.dtype == k.dtype and S + T <= store.keys.shape[2]):
            store = KVStore(past.keys.to(k.dtype), past.values.to(v.dtype), T)  # first step, a branch, or full: copy
        store.keys[:, :, S : S + T], store.values[:, :, S : S + T] = k, v
        store.length = S + T
        return store.keys[:, :, : S + T], store.values[:, :, : S + T], store


@register_mixer("attention", paper="Attention Is All You Need (Vaswani et al., 2017)")
class AttentionMixer(Mixer):
    """Multi-head softmax attention over x: (B, T, d_model) -> (B, T, d_model).

    Args:
        num_heads: query heads; default max(1, d_model // 64).
        num_kv_heads: key/value heads (grouped-query attention), must divide num_heads; default num_heads.
        head_dim: channels per head; default d_model // num_heads.
        causal: causal attention with a `KVCache` state; False attends both ways and has no state.
        window: sliding window; a query sees itself and the previous window - 1 valid tokens (non-causal:
            the window - 1 valid tokens on each side). None = unbounded.
        num_sinks: attention sinks (StreamingLLM); the first num_sinks valid tokens of each sequence stay visible
            whatever the window (causal: to every later query) and the cache never evicts them. Without a
            window this changes nothing.
        rope: rotary position embedding on queries and keys; positions count valid tokens only.
        rope_base: RoPE base frequency.
        bias: biases in the q, k, v and output projections.
        dropout: dropout on the attention weights in training.

    Padded tokens (mask False) are absent: no real token attends to them, they take no position and
    do not count toward the window or the sinks.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        window: int | None = None,
        num_sinks: int = 0,
        rope: bool = True,
        rope_base: float = 10000.0,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(d_model)
        num_heads = max(1, d_model // 64) if num_heads is None else num_heads
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive_int("attention", "num_heads", num_heads)
        check_positive_int("attention", "num_kv_heads", num_kv_heads)
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(
                    f"attention: num_heads={num_heads} does not divide d_model={d_model}; "
                    "choose num_heads dividing d_model or pass head_dim"
                )
            head_dim = d_model // num_heads
        check_positive_int("attention", "head_dim", head_dim)
        if num_heads % num_kv_heads:
            raise ValueError(f"attention: num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        if window is not None:
            check_positive_int("attention", "window", window)
        check_nonnegative_int("attention", "num_sinks", num_sinks)
        if rope and head_dim % 2:
            raise ValueError(
                f"attention: RoPE needs an even head_dim, got {head_dim}; change head_dim or set rope=False"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention: dropout must be in [0, 1), got {dropout}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.window, self.num_sinks = causal, window, num_sinks
        self.rope, self.rope_base, self.dropout = rope, rope_base, dropout
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, causal={self.causal}, window={self.window}, num_sinks={self.num_sinks}, "
            f"rope={self.rope}"
        )

    def mix(self, x: Tensor, state: KVCache | None, mask: Tensor | None) -> tuple[Tensor, KVCache | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        past = self._empty_cache(k) if state is None else self._checked(state, k)
        query_pos = past.positions[:, None] + valid.cumsum(1) - valid.long()  # [B, T] valid tokens before each
        if self.rope:
            q, k = apply_rotary(q, query_pos, self.rope_base), apply_rotary(k, query_pos, self.rope_base)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H_kv, T, D]
        if self.causal and self.window is None and not torch.is_grad_enabled():  # a decoding cache that keeps growing
            keys, values, store = KVStore.append(past, k, v)  # [B, H_kv, S, D]
        else:  # training, no state (non-causal) or a window's bounded cache: concatenate
            keys, values, store = torch.cat([past.keys.to(k.dtype), k], dim=2), torch.cat([past.values.to(v.dtype), v], dim=2), None
        key_valid = torch.cat([past.valid, valid], dim=1)  # [B, S]
        positions = past.positions + valid.sum(1)
        attn_mask = None
        if mask is not None or state is not None or self.window is not None:
            attn_mask = self._attention_mask(query_pos, self._key_positions(key_valid, positions), key_valid)
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            keys_per_head, values_per_head = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        else:  # repeat_interleave(1) would copy the whole cache
            keys_per_head, values_per_head = keys, values
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys_per_head,
            values_per_head,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )  # [B, H, T, D]
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if not self.causal:
            return y, None
        return y, self._bounded(KVCache(keys, values, key_valid, positions, store))

    def _key_positions(self, key_valid: Tensor, positions: Tensor) -> Tensor:
        """(B, S) position of each valid key, exact for valid entries, of a key list laid out like the cache
        (sinks, then the last valid tokens) that ends with the valid token at positions - 1 (positions: (B,))."""
        rank = key_valid.cumsum(1) - 1  # [B, S] index among the valid keys
        tail = positions[:, None] - key_valid.sum(1, keepdim=True) + rank
        return torch.where(rank < self.num_sinks, rank, tail)

    def _attention_mask(self, query_pos: Tensor, key_pos: Tensor, key_valid: Tensor) -> Tensor:
        """Bool (B, 1, T, S), True = may attend; causality and window measured in valid-token positions."""
        distance = query_pos[:, :, None] - key_pos[:, None, :]  # [B, T, S]
        allowed = key_valid[:, None, :].expand_as(distance)
        if self.causal:
            allowed = allowed & (distance >= 0)
        if self.window is not None:
            allowed = allowed & ((distance.abs() < self.window) | (key_pos < self.num_sinks)[:, None, :])
        # A padded query may see no key at all; a fully masked row would make softmax NaN.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return allowed.unsqueeze(1)

    def _bounded(self, cache: KVCache) -> KVCache:
        """With a window, keep the sinks and the last window - 1 valid entries of each sequence, in order;
        evicted entries and padding go first and are cut, or marked invalid where a row keeps fewer."""
        if self.window is None:
            return cache
        S = cache.valid.shape[1]
        key_pos = self._key_positions(cache.valid, cache.positions)
        recent = key_pos >= cache.positions[:, None] - (self.window - 1)
        kept = cache.valid & (recent | (key_pos < self.num_sinks))  # [B, S]
        size = min(self.num_sinks + self.window - 1, S)
        order = torch.argsort(kept.to(torch.int8), dim=1, stable=True)[:, S - size:]  # [B, size]
        index = order[:, None, :, None].expand(-1, cache.keys.shape[1], -1, cache.keys.shape[3])
        keys, values = cache.keys.gather(2, index), cache.values.gather(2, index)
        return KVCache(keys, values, kept.gather(1, order), cache.positions)

    def _empty_cache(self, k: Tensor) -> KVCache:
        B, _, H, D = k.shape
        empty = k.new_zeros(B, H, 0, D)
        return KVCache(empty, empty, k.new_zeros(B, 0, dtype=torch.bool), k.new_zeros(B, dtype=torch.long))

    def _checked(self, state: KVCache, k: Tensor) -> KVCache:
        if not isinstance(state, KVCache):
            raise TypeError(
                f"attention state must be the KVCache returned by a previous call, got {type(state).__name__}"
            )
        B, _, H, D = k.shape
        if state.keys.shape[0] != B or state.positions.shape != (B,):
            raise ValueError(f"attention state is for batch size {state.keys.shape[0]} but x has batch size {B}")
        if state.keys.shape[1] != H or state.keys.shape[3] != D:
            raise ValueError(
                f"attention state keys have shape {tuple(state.keys.shape)}; this mixer expects (B, {H}, S, {D})"
            )
        return state
