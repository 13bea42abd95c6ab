"""The memory network of the neural-memory op and the pieces of its inner update (spec memory_mixers.md, 0-3).

A memory is a stack of layers z_l = W_l h_{l-1} (dense) or z_l = w_l * h_{l-1} (diagonal, the
"vector" memory), with an activation between layers and optionally M(x) = x + LN(f(x)) around them.
Its weights are the recurrent state. Everything here works on batched weights: shared weights carry a
token dim of size 1, (B, H, 1, *shape), per-token weights (B, H, n, *shape); inputs are (B, H, n, d).
Per-token gradients are taken by explicit backpropagation (no autograd), so they stay differentiable
for the outer optimiser and work under `torch.no_grad()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MEMORY_KINDS = ("vector", "matrix", "mlp")
OBJECTIVES = ("l2", "lp", "huber")
RETENTIONS = ("decay", "lq", "kl")
OPTIMIZERS = ("gd", "momentum", "muon")
ACTIVATIONS = ("gelu", "silu")
LAYER_NORM_EPS = 1e-5
SMOOTH_EPS = 1e-6  # |r| ~ sqrt(r^2 + eps) in the Lp objective
KL_FLOOR = 1e-6  # log W of a simplex memory is taken at max(W, floor): linear in-chunk steps can reach 0


@dataclass(frozen=True)
class MemorySpec:
    """What the memory is and how it learns (the four Miras axes plus the ATLAS options).

    kind: "vector" (M(k) = w * k), "matrix" (M(k) = W k) or "mlp" (depth >= 2 layers, width hidden).
    residual_norm: M(k) = k + LN(f(k)) with a per-head LN gain (needs key_dim == value_dim).
    objective: attentional bias on r = M(k) - v: "l2" ||r||^2, "lp" ||r||_p^p, "huber" (per channel,
        quadratic up to a per-token threshold delta, then linear).
    retention: "decay" (W <- r W), "lq" (Moneta: accumulator A, weights A / ||A||_q^(q-2) with the
        normaliser frozen at the chunk's anchor), "kl" (Memora: softmax step on the simplex at each
        chunk's first token, linear steps inside the chunk).
    optimizer: "gd", "momentum" (Titans' surprise) or "muon" (ATLAS: momentum, then Newton-Schulz).
    window: Omega rule, each step's gradient is a gated sum over the last `window` tokens (1 = Titans).
    """

    key_dim: int
    value_dim: int
    kind: str = "mlp"
    hidden: int = 0
    depth: int = 2
    activation: str = "gelu"
    residual_norm: bool = False
    objective: str = "l2"
    p: float = 2.0
    retention: str = "decay"
    q: float = 2.0
    optimizer: str = "momentum"
    ns_steps: int = 5
    window: int = 1

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"neural memory: {message}")

        for name, value, allowed in (
            ("kind", self.kind, MEMORY_KINDS),
            ("objective", self.objective, OBJECTIVES),
            ("retention", self.retention, RETENTIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("activation", self.activation, ACTIVATIONS),
        ):
            need(value in allowed, f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        for name in ("key_dim", "value_dim", "ns_steps", "window"):
            value = getattr(self, name)
            positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            need(positive, f"{name} must be a positive int, got {value!r}")
        if self.kind == "mlp":
            depth_ok, hidden_ok = isinstance(self.depth, int) and self.depth >= 2, isinstance(self.hidden, int) and self.hidden >= 1
            need(depth_ok, f"an mlp memory needs depth >= 2 layers, got {self.depth!r} (use kind='matrix' for one)")
            need(hidden_ok, f"an mlp memory needs a positive hidden width, got {self.hidden!r}")
        if self.kind == "vector" or self.residual_norm:
            need(
                self.key_dim == self.value_dim,
                f"kind={self.kind!r} with residual_norm={self.residual_norm} needs key_dim == value_dim, "
                f"got {self.key_dim} and {self.value_dim}",
            )
        need(self.p >= 1, f"the Lp objective needs p >= 1, got {self.p}")
        need(self.q >= 2, f"the lq retention needs q >= 2, got {self.q}")
        if self.retention != "decay":
            need(self.optimizer == "gd", f"retention={self.retention!r} supports optimizer='gd' only, got {self.optimizer!r}")
        need(
            not (self.optimizer == "muon" and self.kind == "vector"),
            "optimizer='muon' orthogonalises weight matrices; a vector memory has none (use kind='matrix' or 'mlp')",
        )

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of each layer's weight per head: (out, in) for dense layers, (d,) for the vector memory."""
        if self.kind == "vector":
            return [(self.key_dim,)]
        if self.kind == "matrix":
            return [(self.value_dim, self.key_dim)]
        return [(self.hidden, self.key_dim)] + [(self.hidden, self.hidden)] * (self.depth - 2) + [(self.value_dim, self.hidden)]


def _act(name: str, z: Tensor) -> Tensor:
    return F.gelu(z) if name == "gelu" else F.silu(z)


def _act_derivative(name: str, z: Tensor) -> Tensor:
    if name == "gelu":  # d/dz z Phi(z) = Phi(z) + z phi(z)
        return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _linear(w: Tensor, h: Tensor, transpose: bool = False) -> Tensor:
    """Layer map for weights w (B, H, 1 or n, *shape) and inputs h (B, H, n, in) (or (.., out) when transposed)."""
    if w.dim() == h.dim():  # diagonal layer
        return w * h
    if w.shape[2] == 1:
        w = w[:, :, 0]
        return h @ w if transpose else h @ w.transpose(-1, -2)
    w = w if transpose else w.transpose(-1, -2)  # per-token weights
    return (h.unsqueeze(-2) @ w).squeeze(-2)


@dataclass
class ForwardCache:
    """What the backward pass needs: the layer inputs h_{l-1}, pre-activations z_l, LN statistics."""

    inputs: list[Tensor]
    preacts: list[Tensor]
    normed: Tensor | None
    rstd: Tensor | None


def memory_forward(
    spec: MemorySpec, weights: list[Tensor], x: Tensor, norm_weight: Tensor | None
) -> tuple[Tensor, ForwardCache]:
    """M_W(x): weights [(B, H, 1 or n, *shape)], x (B, H, n, key_dim), norm_weight (H, value_dim) -> (B, H, n, value_dim)."""
    h, inputs, preacts = x, [], []
    for layer, w in enumerate(weights):
        inputs.append(h)
        z = _linear(w, h)
        preacts.append(z)
        h = _act(spec.activation, z) if layer < len(weights) - 1 else z
    if not spec.residual_norm:
        return h, ForwardCache(inputs, preacts, None, None)
    mean = h.mean(-1, keepdim=True)
    rstd = torch.rsqrt((h - mean).square().mean(-1, keepdim=True) + LAYER_NORM_EPS)
    normed = (h - mean) * rstd
    return x + normed * norm_weight[:, None, :], ForwardCache(inputs, preacts, normed, rstd)


def layer_errors(
    spec: MemorySpec, weights: list[Tensor], cache: ForwardCache, error: Tensor, norm_weight: Tensor | None
) -> list[Tensor]:
    """dl/dz_l of every layer for the output error dl/dM(x) = error (B, H, n, value_dim): [(B, H, n, out_l)]."""
    delta = error
    if spec.residual_norm:
        g = error * norm_weight[:, None, :]
        xhat = cache.normed
        delta = cache.rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    deltas = [delta]
    for layer in range(len(weights) - 1, 0, -1):
        delta = _linear(weights[layer], delta, transpose=True) * _act_derivative(spec.activation, cache.preacts[layer - 1])
        deltas.insert(0, delta)
    return deltas


def output_error(spec: MemorySpec, prediction: Tensor, value: Tensor, huber_delta: Tensor | None) -> Tensor:
    """dl/dM(k) for r = M(k) - v: l2 2r; lp p r (r^2 + eps)^((p-2)/2); huber 2 clamp(r, -delta, delta)."""
    r = prediction - value
    if spec.objective == "l2":
        return 2 * r
    if spec.objective == "lp":
        return spec.p * r * (r.square() + SMOOTH_EPS) ** ((spec.p - 2) / 2)
    delta = huber_delta.unsqueeze(-1)
    return 2 * torch.minimum(torch.maximum(r, -delta), delta)


def token_gradients(
    spec: MemorySpec,
    weights: list[Tensor],
    keys: Tensor,
    values: Tensor,
    huber_delta: Tensor | None,
    norm_weight: Tensor | None,
) -> list[Tensor]:
    """Per-token gradients grad_W l(W; k_i, v_i) at shared weights [(B, H, 1, *shape)] -> [(B, H, n, *shape)].

    keys (B, H, n, key_dim), values (B, H, n, value_dim), huber_delta (B, H, n) or None.
    """
    prediction, cache = memory_forward(spec, weights, keys, norm_weight)
    deltas = layer_errors(spec, weights, cache, output_error(spec, prediction, values, huber_delta), norm_weight)
    # dense layer: delta_i h_i^T (rank one per token); diagonal layer: delta_i * h_i
    return [d * h if w.dim() == d.dim() else d.unsqueeze(-1) * h.unsqueeze(-2) for w, d, h in zip(weights, deltas, cache.inputs)]


def newton_schulz(S: Tensor, steps: int) -> Tensor:
    """Quintic Newton-Schulz orthogonalisation (Muon) of matrices S (..., m, n): about the polar factor of S."""
    X = S / (S.flatten(-2).norm(dim=-1)[..., None, None] + 1e-7)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.transpose(-1, -2)
    for _ in range(steps):
        A = X @ X.transpose(-1, -2)
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    return X.transpose(-1, -2) if tall else X


def lq_scale(spec: MemorySpec, accumulator: Tensor) -> Tensor:
    """Moneta's normaliser 1 / ||A||_q^(q-2) per head of one weight tensor A (B, H, *shape) -> (B, H, 1, ..., 1)."""
    norm = accumulator.flatten(2).abs().pow(spec.q).sum(-1).pow(1 / spec.q)
    return norm.clamp_min(1e-12).pow(2 - spec.q).view(accumulator.shape[:2] + (1,) * (accumulator.dim() - 2))


def effective_weights(spec: MemorySpec, state_weights: list[Tensor], anchor: list[Tensor]) -> list[Tensor]:
    """Weights the memory computes with: the state itself, or for "lq" the accumulator scaled by the anchor's normaliser."""
    if spec.retention != "lq":
        return state_weights
    scales = [lq_scale(spec, a) for a in anchor]
    return [w * (s.unsqueeze(2) if w.dim() > a.dim() else s) for w, a, s in zip(state_weights, anchor, scales)]


def select_rows(condition: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """new where condition (B,) holds, else old; new, old (B, ...)."""
    return torch.where(condition.view((-1,) + (1,) * (new.dim() - 1)), new, old)


def simplex_step(weights: Tensor, log_retention: Tensor, lr: Tensor, gradient: Tensor) -> Tensor:
    """Memora's step W <- Softmax(r log W - lr grad) over each weight row (last dim); weights (B, H, *shape)."""
    shape = (-1,) + (1,) * (weights.dim() - 2)
    r, lr = log_retention.exp().reshape(weights.shape[:2] + shape[1:]), lr.reshape(weights.shape[:2] + shape[1:])
    return torch.softmax(r * weights.clamp_min(KL_FLOOR).log() - lr * gradient, dim=-1)
