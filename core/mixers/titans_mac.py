"""Titans MAC, memory as context (spec memory_mixers.md 1.6): segment-local attention over
[persistent memory || memory reads || segment], gated by the memory's own read."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import check_nonnegative_int, check_positive_int
from core.mixers._common import check_state
from core.mixers.titans import TITANS_PAPER, TITANS_THETA_MAX, titans_memory
from core.mixers.titans_memory import MemoryLayerState
from core.registry import register_mixer
from core.rotary import apply_rotary


@dataclass
class MACState:
    """State of `titans_mac`.

    memory: the LMM's `MemoryLayerState`.
    keys, values: (B, H, S, D) attention keys (RoPE applied) and values of the current segment's tokens
        and memory reads so far (S <= 2 (segment_size - 1)); key_positions (B, S) int64, key_valid (B, S) bool.
    position: (B,) int64, valid tokens seen so far.
    """

    memory: MemoryLayerState
    keys: Tensor
    values: Tensor
    key_positions: Tensor
    key_valid: Tensor
    position: Tensor


@register_mixer("titans_mac", paper=TITANS_PAPER)
class TitansMAC(Mixer):
    """Titans, memory as context, over x: (B, T, d_model). Segments of C = segment_size tokens on a grid
    fixed to absolute positions; the LMM (as in `titans_mal`) has chunk size C, so its anchor is the
    memory at the segment's start, M_{s-1}:
      h_t = M_{s-1}(q_t)                    per-token read of the memory before the segment (no update)
      a_t = Attn(q_t; [P, (h_j, x_j) for j <= t in the segment])   P: learned persistent keys and values
      m_t = LMM(x)_t                        the memory after writing x_1..x_t (read after write)
      y_t = W_a a_t * sigmoid(m_t)
    h_t enters the attention through W_h (to d_model) and the attention's key and value maps; RoPE on
    queries and keys at absolute positions. The memory stores the segment inputs x (lucidrains' choice;
    the paper's step 4 stores the attention outputs, which would make segments sequential).

    Args:
        segment_size: C, the attention span and the memory's chunk size.
        num_heads: attention heads (default d_model // 64, at least 1); d_model / num_heads must be even.
        num_persistent: learned persistent key/value pairs per head (0 = none).
        head_dim, expand, depth, theta_max, use_short_conv, conv_size, impl: the memory's, as for `miras`;
            theta_max defaults to 0.02 (see `TITANS_THETA_MAX`).

    State: `MACState`.
    """

    def __init__(
        self,
        d_model: int,
        segment_size: int = 16,
        num_heads: int | None = None,
        num_persistent: int = 4,
        head_dim: int | None = None,
        expand: float = 4.0,
        depth: int = 2,
        theta_max: float = TITANS_THETA_MAX,
        use_short_conv: bool = True,
        conv_size: int = 4,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        name = self.registered_name
        check_positive_int(name, "segment_size", segment_size)
        num_heads = max(1, d_model // 64) if num_heads is None else num_heads
        check_positive_int(name, "num_heads", num_heads)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"{name}: d_model / num_heads = {d_model} / {num_heads} must be an even whole number (RoPE)")
        check_nonnegative_int(name, "num_persistent", num_persistent)
        self.segment_size, self.num_heads, self.attn_dim = segment_size, num_heads, d_model // num_heads
        self.lmm = titans_memory(name, d_model, dict(
            head_dim=head_dim, expand=expand, depth=depth, chunk_size=segment_size, theta_max=theta_max,
            use_short_conv=use_short_conv, conv_size=conv_size, impl=impl,
        ))
        memory = self.lmm.memory
        self.read_proj = nn.Linear(memory.num_heads * memory.head_dim, d_model, bias=False)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.persistent_kv = nn.Parameter(0.02 * torch.randn(2, num_heads, num_persistent, self.attn_dim))

    def mix(self, x: Tensor, state: MACState | None, mask: Tensor | None) -> tuple[Tensor, MACState]:
        check_state(self.registered_name, state, MACState)
        B, T, _ = x.shape
        H, D, C = self.num_heads, self.attn_dim, self.segment_size
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        o, reads, memory = self.lmm.memory(x, None if state is None else state.memory, mask, read_anchor=True)
        m = self.lmm.output(o, self.lmm.gate_proj(x).unflatten(-1, (self.lmm.memory.num_heads, -1)))
        past = self._empty(x) if state is None else state
        positions = past.position[:, None] + valid.cumsum(1) - valid.long()  # [B, T]
        q = apply_rotary(self.q_proj(x).unflatten(-1, (H, D)), positions).transpose(1, 2)  # [B, H, T, D]
        kv = self.kv_proj(torch.cat([x, self.read_proj(reads.flatten(-2))], dim=1)).unflatten(-1, (2, H, D))
        k = apply_rotary(kv[:, :, 0], positions.repeat(1, 2)).transpose(1, 2)  # [B, H, 2T, D]: tokens, then reads
        keys = torch.cat([past.keys.to(k.dtype), k], dim=2)
        values = torch.cat([past.values.to(k.dtype), kv[:, :, 1].transpose(1, 2)], dim=2)
        key_positions = torch.cat([past.key_positions, positions, positions], dim=1)  # [B, S]
        key_valid = torch.cat([past.key_valid, valid, valid], dim=1)
        allowed = key_valid[:, None] & (key_positions[:, None] <= positions[..., None])
        allowed = allowed & (key_positions[:, None] // C == positions[..., None] // C)  # [B, T, S]
        persistent = self.persistent_kv.to(k.dtype)
        P = persistent.shape[2]
        attn_mask = torch.cat([allowed.new_ones(B, T, P), allowed], dim=-1).unsqueeze(1)
        a = F.scaled_dot_product_attention(
            q,
            torch.cat([persistent[0].expand(B, -1, -1, -1), keys], dim=2),
            torch.cat([persistent[1].expand(B, -1, -1, -1), values], dim=2),
            attn_mask=attn_mask | ~attn_mask.any(-1, keepdim=True),  # a padded query without keys would give NaN
        )
        y = self.out_proj(a.transpose(1, 2).flatten(-2)) * torch.sigmoid(m)
        position = past.position + valid.sum(1)
        return y, self._current_segment(memory, keys, values, key_positions, key_valid, position)

    def _current_segment(
        self, memory: MemoryLayerState, keys: Tensor, values: Tensor, key_positions: Tensor, key_valid: Tensor, position: Tensor
    ) -> MACState:
        """Keep the entries of each row's unfinished segment (at most 2 (C - 1)), padding first."""
        C, S = self.segment_size, key_valid.shape[1]
        keep = key_valid & (key_positions >= position[:, None] // C * C)
        count = min(2 * (C - 1), S)
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, S - count:]  # [B, count]
        index = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        return MACState(
            memory, keys.gather(2, index), values.gather(2, index), key_positions.gather(1, order), keep.gather(1, order), position
        )

    def _empty(self, x: Tensor) -> MACState:
        B = x.shape[0]
        empty = x.new_zeros(B, self.num_heads, 0, self.attn_dim)
        none = torch.zeros(B, 0, dtype=torch.long, device=x.device)
        return MACState(None, empty, empty, none, none.bool(), torch.zeros(B, dtype=torch.long, device=x.device))
