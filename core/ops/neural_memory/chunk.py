"""Chunked neural memory (Titans sec. 3.2, spec 1.3, 2.2-2.4, 3.3): the parallel form, exact for any split.

Rows are first aligned to the absolute chunk grid: each row's valid tokens are moved so that a token
at grid position p (tokens seen mod b at the call's start, plus its rank) sits at p - min over rows;
the free slots are inert (theta = 0, r = eta = 1, not applied). A chunk cut by the call's ends is
processed in part. Then per chunk of b tokens, all per-token gradients are taken at
the anchor in one batched pass, and the momentum and retention recurrences become products with
lower-triangular decay matrices from chunk-local log-cumsums; the memory weights of every token
of the chunk are materialised (b x #weights) and the queries read them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.ops.chunking import scalar_decay
from core.ops.dispatch import register
from core.ops.neural_memory.memory import (
    MemorySpec,
    effective_weights,
    memory_forward,
    newton_schulz,
    select_rows,
    simplex_step,
    token_gradients,
)
from core.ops.neural_memory.state import NeuralMemoryState


def _align(x: Tensor, valid: Tensor, start: Tensor, length: int, fill: float) -> Tensor:
    """Row b's valid entries of x (B, T', ...) placed in order from position start[b] of (B, length, ...)."""
    B = x.shape[0]
    dest = torch.where(valid, start[:, None] + valid.cumsum(1) - 1, length)  # invalid -> a dropped slot
    out = x.new_full((B, length + 1) + x.shape[2:], fill)
    index = dest.view(dest.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return out.scatter(1, index, x)[:, :length]


def _unalign(y: Tensor, valid: Tensor, start: Tensor) -> Tensor:
    """Inverse of `_align` for y (B, L, ...): (B, T, ...) with zeros at invalid positions."""
    dest = (start[:, None] + valid.cumsum(1) - 1).clamp(0, y.shape[1] - 1)
    out = y.gather(1, dest.view(dest.shape + (1,) * (y.dim() - 2)).expand(-1, -1, *y.shape[2:]))
    return out * valid.view(valid.shape + (1,) * (y.dim() - 2)).to(y.dtype)


def _band(steps: int, window: int, like: Tensor) -> Tensor:
    """Ms[s, i] = 1 iff step s's window (extended indices s .. s + window - 1) holds i: (steps, steps + window - 1)."""
    s = torch.arange(steps, device=like.device)[:, None]
    i = torch.arange(steps + window - 1, device=like.device)[None, :]
    return ((i >= s) & (i < s + window)).to(like.dtype)


def _window_gradients(
    spec: MemorySpec, at_anchor: list[Tensor], tokens: list[Tensor], norm_weight: Tensor | None
) -> list[Tensor]:
    """Gs_s = sum_i Ms[s, i] gate_i grad l(W°; k_i, v_i) over extended tokens: tokens = [keys, values, gates,
    deltas] (B, H, n + c - 1, .) -> [(B, H, n, #w)]."""
    keys, values, gates, deltas = tokens
    U = token_gradients(spec, [a.unsqueeze(2) for a in at_anchor], keys, values, deltas, norm_weight)
    steps = keys.shape[2] - spec.window + 1
    weight = _band(steps, spec.window, gates) * gates[:, :, None, :]  # [B, H, n, n + c - 1]
    return [weight @ u.flatten(3) for u in U]


def _chunk_weights(
    spec: MemorySpec,
    grads: list[Tensor],  # [(B, H, n, #w)]
    weights: list[Tensor],  # [(B, H, *shape)] at the chunk start
    momentum: list[Tensor] | None,
    theta: Tensor,  # [B, H, n]
    log_r: Tensor,
    log_eta: Tensor,
    real: Tensor,  # [B, H, n] 1 for real tokens
) -> tuple[list[Tensor], list[Tensor] | None]:
    """Per-token weights [(B, H, n, #w)] and momenta of the chunk, as decay-matrix products (spec 1.3, 3.3)."""
    decay = scalar_decay(log_r.cumsum(-1)[..., None])  # [B, H, n, n], exp(R_t - R_s), s <= t
    start = log_r.cumsum(-1).exp()[..., None]  # [B, H, n, 1], exp(R_t)
    flat = [w.flatten(2)[:, :, None] for w in weights]  # [B, H, 1, #w]
    if spec.optimizer == "gd":
        return [start * w - (decay * theta[:, :, None, :]) @ g for w, g in zip(flat, grads)], None
    carry = scalar_decay(log_eta.cumsum(-1)[..., None])
    carry_start = log_eta.cumsum(-1).exp()[..., None]
    all_weights, all_momenta = [], []
    for w, s0, g, shape in zip(flat, momentum, grads, [w.shape[2:] for w in weights]):
        if spec.optimizer == "momentum":
            S = carry_start * s0.flatten(2)[:, :, None] - (carry * theta[:, :, None, :]) @ g
            applied = (decay * real[:, :, None, :]) @ S
        else:
            S = carry_start * s0.flatten(2)[:, :, None] - carry @ (g * real[..., None])  # inert steps' windows add nothing
            orthogonal = newton_schulz(S.unflatten(-1, shape), spec.ns_steps).flatten(3)
            applied = (decay * theta[:, :, None, :]) @ orthogonal
        all_weights.append(start * w + applied)
        all_momenta.append(S)
    return all_weights, all_momenta


@register("neural_memory", "chunk", priority=1)
def chunk_neural_memory(
    spec: MemorySpec,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_r: Tensor,
    log_eta: Tensor,
    gate: Tensor,
    delta: Tensor,
    anchor_q: Tensor | None,
    norm_weight: Tensor | None,
    state: NeuralMemoryState,
    mask: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor | None, NeuralMemoryState]:
    """Same contract and results as `naive_neural_memory`, chunk by chunk."""
    b, c = chunk_size, spec.window
    offset, lengths = state.offset, mask.sum(1)
    base, end = int(offset.min()), int((offset + lengths).max())  # the call covers grid positions base .. end - 1
    L, start = max(end - base, 1), offset - base
    real = _align(mask.to(theta.dtype), mask, start, L, 0.0)
    q_a, th_a, lr_a, le_a = (_align(x, mask, start, L, 0.0).transpose(1, 2) for x in (q, theta, log_r, log_eta))
    aq_a = None if anchor_q is None else _align(anchor_q, mask, start, L, 0.0).transpose(1, 2)
    ext_valid = torch.cat([mask.new_ones(mask.shape[0], c - 1), mask], dim=1)
    ext_inputs = [k, v, gate, delta]
    if c > 1:
        tails = [state.window_keys, state.window_values, state.window_gates, state.window_deltas]
        ext_inputs = [torch.cat([t.to(x.dtype), x], dim=1) for t, x in zip(tails, ext_inputs)]
    ext = [_align(x, ext_valid, start, L + c - 1, fill) for x, fill in zip(ext_inputs, (0.0, 0.0, 0.0, 1.0))]
    ext_h = [x.transpose(1, 2) for x in ext]  # keys, values, gates, deltas [B, H, L + c - 1, .]
    real_h = real[:, None, :].expand_as(th_a)
    weights, anchor = list(state.weights), list(state.anchor)
    momentum = None if state.momentum is None else list(state.momentum)
    outputs, anchor_reads = [], []
    for j in range(-(-max(end, 1) // b)):
        lo, hi = max(j * b - base, 0), min((j + 1) * b - base, L)  # the chunk's part inside the call
        steps, window = slice(lo, hi), slice(lo, hi + c - 1)
        th, lr, le = th_a[:, :, steps], lr_a[:, :, steps], le_a[:, :, steps]
        if spec.retention == "kl" and lo == j * b - base:  # the lag token: an exact softmax step at the chunk's first token
            lag = real[:, lo] > 0
            first = slice(lo, lo + c)
            g0 = _window_gradients(spec, weights, [x[:, :, first] for x in ext_h], norm_weight)
            stepped = [simplex_step(w, lr[:, :, 0], th[:, :, 0], g[:, :, 0].view_as(w)) for w, g in zip(weights, g0)]
            weights = [select_rows(lag, s, w) for s, w in zip(stepped, weights)]
            anchor = [select_rows(lag, s, a) for s, a in zip(stepped, anchor)]
            keep = torch.ones_like(th)
            keep[:, :, 0] = 0.0
            th, lr = th * keep, lr * keep
        at_anchor = effective_weights(spec, anchor, anchor)
        grads = _window_gradients(spec, at_anchor, [x[:, :, window] for x in ext_h], norm_weight)
        per_token, momenta = _chunk_weights(spec, grads, weights, momentum, th, lr, le, real_h[:, :, steps])
        per_token = [w.unflatten(-1, s.shape[2:]) for w, s in zip(per_token, weights)]  # [B, H, n, *shape]
        read = effective_weights(spec, per_token, anchor)
        outputs.append(memory_forward(spec, read, q_a[:, :, steps], norm_weight)[0])
        if aq_a is not None:
            anchor_reads.append(memory_forward(spec, [a.unsqueeze(2) for a in at_anchor], aq_a[:, :, steps], norm_weight)[0])
        weights = [w[:, :, -1] for w in per_token]
        if momenta is not None:
            momentum = [m[:, :, -1].view_as(w) for m, w in zip(momenta, weights)]
        complete = offset + lengths >= (j + 1) * b
        anchor = [select_rows(complete, w, a) for w, a in zip(weights, anchor)]
    o = _unalign(torch.cat(outputs, dim=2).transpose(1, 2), mask, start)
    h = None if aq_a is None else _unalign(torch.cat(anchor_reads, dim=2).transpose(1, 2), mask, start)
    tail = [None] * 4
    if c > 1:
        index = (start + lengths)[:, None] + torch.arange(c - 1, device=mask.device)  # [B, c - 1]
        tail = [x.gather(1, index.view(index.shape + (1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])) for x in ext]
    return o, h, NeuralMemoryState(weights, momentum, anchor, (offset + lengths) % b, *tail)
