"""Token-by-token neural memory with the anchor rule (spec 1.4): the readable ground truth, float64-capable."""
from __future__ import annotations

import torch
from torch import Tensor

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


def _per_head(x: Tensor, like: Tensor) -> Tensor:
    """(B, H) -> broadcastable against like (B, H, *shape)."""
    return x.view(x.shape + (1,) * (like.dim() - 2))


@register("neural_memory", "naive")
def naive_neural_memory(
    spec: MemorySpec,
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    theta: Tensor,  # [B, T, H]
    log_r: Tensor,  # [B, T, H]
    log_eta: Tensor,  # [B, T, H]
    gate: Tensor,  # [B, T, H]
    delta: Tensor,  # [B, T, H]
    anchor_q: Tensor | None,  # [B, T, H, K]
    norm_weight: Tensor | None,  # [H, V]
    state: NeuralMemoryState,
    mask: Tensor,  # [B, T] bool
    chunk_size: int,
) -> tuple[Tensor, Tensor | None, NeuralMemoryState]:
    """For each valid token t (absolute position p = tokens seen so far):
      G = sum over the last c tokens i of gate_i grad l(W°; k_i, v_i)      (W° = anchor weights)
      retention "kl", p mod b == 0: W = Softmax(r_t log W - theta_t G) and W° := W (the lag token)
      else gd: W = r_t W - theta_t G;  momentum: S = eta_t S - theta_t G, W = r_t W + S;
           muon: S = eta_t S - G, W = r_t W + theta_t NS(S)
      o_t = M_W(q_t); anchor read h_t = M_W°(anchor_q_t) (before the update); W° := W when p + 1 mod b == 0.
    Padded tokens change nothing. Returns o (B, T, H, V), h (B, T, H, V) or None, and the final state.
    """
    T, c = q.shape[1], spec.window
    weights, anchor, offset = list(state.weights), list(state.anchor), state.offset
    momentum = None if state.momentum is None else list(state.momentum)
    window = None  # the last c - 1 tokens [B, H, c - 1, .]: keys, values, gates, deltas
    if c > 1:
        window = [x.transpose(1, 2) for x in (state.window_keys, state.window_values, state.window_gates, state.window_deltas)]
    outputs, anchor_reads = [], []
    for t in range(T):
        real = mask[:, t]
        step = [k[:, t, :, None], v[:, t, :, None], gate[:, t, :, None], delta[:, t, :, None]]  # [B, H, 1, .]
        if window is not None:
            step = [torch.cat([w, s], dim=2) for w, s in zip(window, step)]
        keys, values, gates, deltas = step
        at_anchor = effective_weights(spec, anchor, anchor)
        grads = token_gradients(spec, [a.unsqueeze(2) for a in at_anchor], keys, values, deltas, norm_weight)
        G = [(g * gates.view(gates.shape + (1,) * (g.dim() - 3))).sum(2) for g in grads]  # [B, H, *shape]
        if anchor_q is not None:
            read = memory_forward(spec, [a.unsqueeze(2) for a in at_anchor], anchor_q[:, t, :, None], norm_weight)[0]
            anchor_reads.append(read[:, :, 0])
        new_weights, new_momentum = [], []
        for layer, (w, g) in enumerate(zip(weights, G)):
            r, lr = _per_head(log_r[:, t].exp(), w), _per_head(theta[:, t], w)
            if spec.optimizer == "gd":
                new = r * w - lr * g
                if spec.retention == "kl":
                    new = select_rows(offset == 0, simplex_step(w, log_r[:, t], theta[:, t], g), new)
            else:
                s = _per_head(log_eta[:, t].exp(), w) * momentum[layer] - (lr * g if spec.optimizer == "momentum" else g)
                new = r * w + (s if spec.optimizer == "momentum" else lr * newton_schulz(s, spec.ns_steps))
                new_momentum.append(s)
            new_weights.append(new)
        read = effective_weights(spec, new_weights, anchor)
        outputs.append(memory_forward(spec, [w.unsqueeze(2) for w in read], q[:, t, :, None], norm_weight)[0][:, :, 0])
        weights = [select_rows(real, n, w) for n, w in zip(new_weights, weights)]
        if momentum is not None:
            momentum = [select_rows(real, n, s) for n, s in zip(new_momentum, momentum)]
        if spec.retention == "kl":
            anchor = [select_rows(real & (offset == 0), w, a) for w, a in zip(weights, anchor)]
        offset = torch.where(real, (offset + 1) % chunk_size, offset)
        anchor = [select_rows(real & (offset == 0), w, a) for w, a in zip(weights, anchor)]
        if window is not None:
            window = [select_rows(real, s[:, :, 1:], w) for s, w in zip(step, window)]
    o = torch.stack(outputs, dim=1)
    h = torch.stack(anchor_reads, dim=1) if anchor_q is not None else None
    tail = [None] * 4 if window is None else [w.transpose(1, 2) for w in window]
    return o, h, NeuralMemoryState(weights, momentum, anchor, offset, *tail)
