"""Neural memory: an MLP (or matrix, or vector) whose weights are the state, trained online by gradient
steps on an associative loss while reading the sequence (Titans, Miras, ATLAS); see README.md.

Implementations register under the op name "neural_memory" (`core.ops.dispatch.register`) and take
normalised arguments `(spec, q, k, v, theta, log_r, log_eta, gate, delta, anchor_q, norm_weight,
state, mask, chunk_size)`: every optional per-token input filled in (log_eta 0, gate 1, delta 1), a
concrete state and mask, all in the state dtype. They return `(o, h or None, state)`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.ops.checks import check_float, check_mask, check_per_token, check_qkv, check_shape, state_dtype
from core.ops.dispatch import resolve
from core.ops.neural_memory import chunk, naive  # noqa: F401  (they register themselves)
from core.ops.neural_memory.memory import MemorySpec
from core.ops.neural_memory.state import NeuralMemoryState

__all__ = ["MemorySpec", "NeuralMemoryState", "initial_memory_state", "neural_memory"]


def initial_memory_state(spec: MemorySpec, initial_weights: list[Tensor], batch: int, dtype: torch.dtype) -> NeuralMemoryState:
    """The state at the start of a sequence: weights = anchor = initial_weights [(H, *shape)] for every row."""
    weights = [w.to(dtype).unsqueeze(0).expand(batch, *w.shape) for w in initial_weights]
    device, H = weights[0].device, initial_weights[0].shape[0]
    momentum = None if spec.optimizer == "gd" else [torch.zeros_like(w) for w in weights]
    window = [None] * 4
    if spec.window > 1:
        c = spec.window - 1
        zeros = torch.zeros(batch, c, H, dtype=dtype, device=device)
        keys, values = zeros.new_zeros(batch, c, H, spec.key_dim), zeros.new_zeros(batch, c, H, spec.value_dim)
        window = [keys, values, zeros, torch.ones_like(zeros)]
    return NeuralMemoryState(weights, momentum, list(weights), torch.zeros(batch, dtype=torch.long, device=device), *window)


def _check_state(state: NeuralMemoryState, spec: MemorySpec, batch: int, heads: int, device: torch.device) -> None:
    if not isinstance(state, NeuralMemoryState):
        raise TypeError(f"initial_state must be the NeuralMemoryState returned by a previous call, got {type(state).__name__}")
    shapes = spec.shapes
    groups = {"weights": state.weights, "anchor": state.anchor}
    if (state.momentum is None) != (spec.optimizer == "gd"):
        raise ValueError(
            f"initial_state {'lacks' if state.momentum is None else 'has'} a momentum but optimizer={spec.optimizer!r}; "
            "pass the state of a call with the same spec"
        )
    if state.momentum is not None:
        groups["momentum"] = state.momentum
    for name, tensors in groups.items():
        if len(tensors) != len(shapes):
            raise ValueError(f"initial_state.{name} has {len(tensors)} tensors, the memory has {len(shapes)} layers")
        for layer, (x, shape) in enumerate(zip(tensors, shapes)):
            check_float(f"initial_state.{name}[{layer}]", x)
            check_shape(f"initial_state.{name}[{layer}]", x, (batch, heads, *shape), "(B, H, *layer shape)")
    check_shape("initial_state.offset", state.offset, (batch,), "(B,)")
    if (state.window_keys is None) != (spec.window == 1):
        raise ValueError(
            f"initial_state's Omega window does not match window={spec.window}; pass the state of a call with the same spec"
        )


def neural_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_r: Tensor,
    *,
    spec: MemorySpec,
    initial_weights: list[Tensor],
    log_eta: Tensor | None = None,
    window_gate: Tensor | None = None,
    huber_delta: Tensor | None = None,
    anchor_q: Tensor | None = None,
    norm_weight: Tensor | None = None,
    chunk_size: int = 16,
    initial_state: NeuralMemoryState | None = None,
    mask: Tensor | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None, NeuralMemoryState]:
    """Write (k_t, v_t) into a neural memory by one inner optimiser step per token, read o_t = M_t(q_t).

    q, k: (B, T, H, key_dim); v: (B, T, H, value_dim); per token and head (B, T, H): theta (step size
    >= 0), log_r (log retention <= 0; Titans' r = 1 - alpha), log_eta (log momentum, needed by
    optimizer "momentum" and "muon"), window_gate (Omega-rule gate of each token, default 1),
    huber_delta (threshold of objective "huber"). spec: the memory and its learning rule (MemorySpec).
    initial_weights: [(H, *shape)] per layer of `spec.shapes` (learned W_init); norm_weight (H, value_dim)
    for spec.residual_norm. chunk_size b: every gradient of a chunk is taken at the weights of the
    chunk's start (the anchor) on a grid fixed to absolute positions, so b is part of the model
    (b = 1: the fully online rule). anchor_q (B, T, H, key_dim): also read h_t = M_anchor(anchor_q_t),
    the memory as of the last chunk boundary (Titans MAC). mask (B, T) bool: padded tokens are absent.
    impl: "naive", "chunk" or None (best on the device).
    Returns o (B, T, H, value_dim) in q's dtype, h (same) or None, and the NeuralMemoryState to continue.
    """
    if not isinstance(spec, MemorySpec):
        raise TypeError(f"spec must be a core.ops.neural_memory.MemorySpec, got {type(spec).__name__}")
    B, T, H, K, V = check_qkv(q, k, v)
    if (K, V) != (spec.key_dim, spec.value_dim):
        raise ValueError(
            f"q, k have {K} and v {V} channels per head but spec has key_dim={spec.key_dim}, value_dim={spec.value_dim}"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    per_token = {"theta": theta, "log_r": log_r, "log_eta": log_eta, "window_gate": window_gate, "huber_delta": huber_delta}
    for name, x in per_token.items():
        if x is not None:
            check_per_token(name, x, (B, T, H), "(B, T, H)", q.device, "One value per token and head.")
    if spec.optimizer != "gd" and log_eta is None:
        raise ValueError(f"optimizer={spec.optimizer!r} needs log_eta, the log momentum per token and head (B, T, H)")
    if spec.objective == "huber" and huber_delta is None:
        raise ValueError("objective='huber' needs huber_delta, the threshold per token and head (B, T, H)")
    if anchor_q is not None:
        if spec.retention == "kl":
            raise ValueError("anchor_q is not supported with retention='kl': its anchor moves at each chunk's first token")
        check_per_token("anchor_q", anchor_q, (B, T, H, K), "(B, T, H, K)", q.device)
    if not isinstance(initial_weights, (list, tuple)) or len(initial_weights) != len(spec.shapes):
        raise ValueError(
            f"initial_weights must be a list of {len(spec.shapes)} tensors (H, *shape) for the layer shapes {spec.shapes}"
        )
    for layer, (w, shape) in enumerate(zip(initial_weights, spec.shapes)):
        check_per_token(f"initial_weights[{layer}]", w, (H, *shape), "(H, *layer shape)", q.device)
    if spec.residual_norm:
        if norm_weight is None:
            raise ValueError("spec.residual_norm needs norm_weight, the LayerNorm gain (H, value_dim)")
        check_per_token("norm_weight", norm_weight, (H, V), "(H, V)", q.device)
    if mask is not None:
        check_mask(mask, B, T)
    dtype = state_dtype(q.dtype)
    if initial_state is None:
        initial_state = initial_memory_state(spec, list(initial_weights), B, dtype)
    else:
        _check_state(initial_state, spec, B, H, q.device)
    fn = resolve("neural_memory", impl, q.device)
    ones = torch.ones(B, T, H, dtype=dtype, device=q.device)

    def cast(x: Tensor | None, default: Tensor | None = None) -> Tensor | None:
        return default if x is None else x.to(dtype)

    o, h, state = fn(
        spec, cast(q), cast(k), cast(v), cast(theta), cast(log_r), cast(log_eta, ones - 1), cast(window_gate, ones),
        cast(huber_delta, ones), cast(anchor_q), cast(norm_weight), initial_state,
        torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask, chunk_size,
    )
    return o.to(q.dtype), (None if h is None else h.to(q.dtype)), state
