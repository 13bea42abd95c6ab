"""The neural-memory layer shared by Titans, Miras and ATLAS (spec memory_mixers.md 1.1, 2.5, 3.5).

    [q, k, v] = SiLU(ShortConv(W x)); q, k L2-normalised per head (then an optional feature map phi);
    per head and token: theta = theta_max sigmoid(.), r = sigmoid(.) (Titans' 1 - alpha),
    eta = sigmoid(.), Omega gate = sigmoid(.), Huber threshold = softplus(.), all from one linear map;
    o_t = M_t(q_t) from `core.ops.neural_memory` with the learned initial memory W_init per head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import GatedHeadOutput, check_state, gate_dtype, l2_normalize, split_heads
from core.ops.neural_memory import MemorySpec, NeuralMemoryState, neural_memory

# Gate biases at initialisation: theta ~ 0.05 theta_max, r ~ 0.993, eta ~ 0.5, Omega gate ~ 0.88, Huber delta ~ 1
# (with theta ~ 0.12 and eta ~ 0.88 a plain MLP memory diverges on random inputs).
GATE_BIAS = {"theta": -3.0, "retention": 5.0, "momentum": 0.0, "window": 2.0, "huber": 0.5}


@dataclass
class MemoryLayerState:
    """State of a neural-memory layer: the op's `NeuralMemoryState` and the short convolution's tail
    (B, conv_size - 1, 3 H K), or None without a convolution."""

    memory: NeuralMemoryState
    conv: Tensor | None


class MemoryLayer(nn.Module):
    """x (B, T, d_model) -> per-head memory reads o (B, T, H, V) (and anchor reads h), with its state.

    spec_options: the `MemorySpec` fields except key_dim / value_dim / hidden (set from head_dim,
    feature_dim and expand). feature_map: a module mapping (B, T, H, head_dim) -> (B, T, H, feature_dim)
    applied to q and k after normalisation (ATLAS), or None.
    """

    def __init__(
        self,
        name: str,
        d_model: int,
        num_heads: int,
        head_dim: int,
        *,
        expand: float,
        chunk_size: int,
        theta_max: float,
        use_short_conv: bool,
        conv_size: int,
        feature_map: nn.Module | None = None,
        feature_dim: int | None = None,
        impl: str | None = None,
        **spec_options: object,
    ) -> None:
        super().__init__()
        check_positive_int(name, "chunk_size", chunk_size)
        check_positive_int(name, "conv_size", conv_size)
        if not theta_max > 0:
            raise ValueError(f"{name}: theta_max must be > 0, got {theta_max!r}")
        hidden = head_dim * expand
        if spec_options.get("kind", "mlp") == "mlp" and (hidden < 1 or hidden != int(hidden)):
            raise ValueError(f"{name}: head_dim * expand = {head_dim} * {expand} must be a positive whole number")
        try:
            self.spec = MemorySpec(feature_dim or head_dim, head_dim, hidden=int(hidden), **spec_options)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        H, K = num_heads, head_dim
        self.num_heads, self.head_dim, self.chunk_size, self.theta_max, self.impl = H, K, chunk_size, theta_max, impl
        self.qkv_proj = nn.Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(3 * H * K, conv_size, activation="silu") if use_short_conv else None
        self.feature_map = feature_map
        self.gate_names = ["theta", "retention"]
        if self.spec.optimizer != "gd":
            self.gate_names.append("momentum")
        if self.spec.window > 1:
            self.gate_names.append("window")
        if self.spec.objective == "huber":
            self.gate_names.append("huber")
        self.gate_proj = nn.Linear(d_model, len(self.gate_names) * H)
        with torch.no_grad():
            self.gate_proj.bias.copy_(torch.tensor([GATE_BIAS[g] for g in self.gate_names]).repeat_interleave(H))
        self.initial_weights = nn.ParameterList(nn.Parameter(self._init_weight(shape)) for shape in self.spec.shapes)
        self.norm_weight = nn.Parameter(torch.ones(H, K)) if self.spec.residual_norm else None

    def _init_weight(self, shape: tuple[int, ...]) -> Tensor:
        """W_init per head: N(0, 1/in) for dense layers, ones for the vector memory; logits for "kl"."""
        H = self.num_heads
        if self.spec.retention == "kl":
            return 0.1 * torch.randn(H, *shape)
        if len(shape) == 1:
            return torch.ones(H, *shape)
        return torch.randn(H, *shape) / math.sqrt(shape[-1])

    def memory_weights(self) -> list[Tensor]:
        """The initial memory [(H, *shape)]: for retention "kl" rows on the simplex (softmax of the logits)."""
        if self.spec.retention == "kl":
            return [torch.softmax(w, dim=-1) for w in self.initial_weights]
        return list(self.initial_weights)

    def forward(
        self, x: Tensor, state: MemoryLayerState | None, mask: Tensor | None, read_anchor: bool = False
    ) -> tuple[Tensor, Tensor | None, MemoryLayerState]:
        """x (B, T, d_model) -> (o (B, T, H, V), anchor reads h (B, T, H, V) or None, state)."""
        H, K = self.num_heads, self.head_dim
        qkv = self.qkv_proj(x)
        if self.conv is None:
            qkv, conv = F.silu(qkv), None
        else:
            qkv, conv = self.conv(qkv, None if state is None else state.conv, mask)
        q, k, v = qkv.unflatten(-1, (3, H, K)).unbind(2)
        q, k = l2_normalize(q), l2_normalize(k)
        if self.feature_map is not None:  # its float32 coefficients must not promote q, k past v's dtype
            q, k = self.feature_map(q).to(v.dtype), self.feature_map(k).to(v.dtype)
        gates = dict(zip(self.gate_names, self.gate_proj(x).to(gate_dtype(x)).unflatten(-1, (-1, H)).unbind(2)))
        o, h, memory = neural_memory(
            q, k, v,
            self.theta_max * torch.sigmoid(gates["theta"]),
            F.logsigmoid(gates["retention"]),
            spec=self.spec,
            initial_weights=self.memory_weights(),
            log_eta=F.logsigmoid(gates["momentum"]) if "momentum" in gates else None,
            window_gate=torch.sigmoid(gates["window"]) if "window" in gates else None,
            huber_delta=F.softplus(gates["huber"]) if "huber" in gates else None,
            anchor_q=q if read_anchor else None,
            norm_weight=self.norm_weight,
            chunk_size=self.chunk_size,
            initial_state=None if state is None else state.memory,
            mask=mask,
            impl=self.impl,
        )
        return o, h, MemoryLayerState(memory, conv)


def default_head_dim(d_model: int, head_dim: int | None, largest: int = 16) -> int | None:
    """head_dim, or when None the largest divisor of d_model up to `largest` (memories cost O(head_dim^2) per token)."""
    if head_dim is not None:
        return head_dim
    return max(d for d in range(1, min(largest, d_model) + 1) if d_model % d == 0)


class MemoryMixer(Mixer):
    """A neural-memory layer as a token mixer: y = out_proj(RMSNorm_h(o) * SiLU(W_g x)), o from `MemoryLayer`.

    x: (B, T, d_model) -> y: (B, T, d_model); state: `MemoryLayerState`. `layer_options` go to `MemoryLayer`;
    `name` (default: the registered name) prefixes error messages.
    """

    def __init__(self, d_model: int, head_dim: int | None, name: str | None = None, **layer_options: object) -> None:
        super().__init__(d_model)
        name = name or self.registered_name
        self.name = name
        H, K = split_heads(name, d_model, default_head_dim(d_model, head_dim))
        self.memory = MemoryLayer(name, d_model, H, K, **layer_options)
        self.gate_proj = nn.Linear(d_model, H * K, bias=False)
        self.output = GatedHeadOutput(H, K, d_model)

    def extra_repr(self) -> str:
        memory = self.memory
        return f"d_model={self.d_model}, num_heads={memory.num_heads}, head_dim={memory.head_dim}, spec={memory.spec}"

    def mix(self, x: Tensor, state: MemoryLayerState | None, mask: Tensor | None) -> tuple[Tensor, MemoryLayerState]:
        check_state(self.name, state, MemoryLayerState)
        o, _, state = self.memory(x, state, mask)
        return self.output(o, self.gate_proj(x).unflatten(-1, (self.memory.num_heads, -1))), state
