"""A stack of pre-norm residual blocks (mixer + gated MLP) over any mixer or hybrid pattern."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from core.bidirectional import Bidirectional
from core.layers import DropPath, GatedMLP, GatedRMSNorm
from core.mixer import Mixer, check_sequence
from core.registry import build_mixer

LayerSpec = str | Mapping[str, Any]


def expand_layers(layers: LayerSpec | Sequence[LayerSpec], depth: int) -> list[tuple[str, dict[str, Any]]]:
    """Repeat a layer pattern to `depth` entries of (mixer name, per-layer options).

    `layers` is a mixer name, or a list whose items are names or mappings {"name": ..., **options};
    the list is cycled, so ["mamba2", "mamba2", "attention"] with depth 6 gives two repeats.
    """
    if isinstance(layers, (str, Mapping)):
        layers = [layers]
    if not isinstance(depth, int) or depth <= 0:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if len(layers) == 0:
        raise ValueError("layers is empty; give a mixer name or a list of names, e.g. ['mamba2', 'attention']")
    specs = []
    for item in layers:
        if isinstance(item, str):
            specs.append((item, {}))
        elif isinstance(item, Mapping) and "name" in item:
            specs.append((item["name"], {k: v for k, v in item.items() if k != "name"}))
        else:
            raise ValueError(f"each layer must be a mixer name or a mapping with a 'name' key, got {item!r}")
    return [specs[i % len(specs)] for i in range(depth)]


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)). x: (B, T, d_model)."""

    def __init__(self, mixer: Mixer, mlp_expand: float, norm_eps: float, drop_path: float) -> None:
        super().__init__()
        d_model = mixer.d_model
        self.mixer_norm = GatedRMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = GatedRMSNorm(d_model, eps=norm_eps) if mlp_expand > 0 else None
        self.mlp = GatedMLP(d_model, expand=mlp_expand) if mlp_expand > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, state: Any = None, mask: Tensor | None = None) -> tuple[Tensor, Any]:
        y, state = self.mixer(self.mixer_norm(x), state, mask)
        x = x + self.drop_path(y)
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.mlp_norm(x)))
        return x, state


class Backbone(nn.Module):
    """`depth` residual blocks over a mixer or a hybrid layer pattern, with a final RMSNorm.

    Args:
        d_model: width of the residual stream.
        depth: number of blocks.
        layers: a mixer name or a pattern list repeated to `depth` (see `expand_layers`).
        mixer_options: options per mixer name, e.g. {"attention": {"num_heads": 4}}; per-layer
            options in `layers` mappings override them.
        mlp_expand: gated-MLP hidden size over d_model; 0 removes the MLP (Mamba-style blocks).
        bidirectional: wrap each causal mixer in `Bidirectional` (a second mixer reads the reversed
            sequence), making the whole stack non-causal.
        combine: how `Bidirectional` joins the two directions ("add" or "concat").
        drop_path_rate: stochastic depth, growing linearly to this value over the blocks.

    forward(x (B, T, d_model), state: list of per-layer states or None, mask (B, T) bool or None)
        -> (y (B, T, d_model), list of per-layer states).
    """

    def __init__(
        self,
        d_model: int,
        depth: int,
        layers: LayerSpec | Sequence[LayerSpec] = "attention",
        *,
        mixer_options: Mapping[str, Mapping[str, Any]] | None = None,
        mlp_expand: float = 8 / 3,
        bidirectional: bool = False,
        combine: str = "add",
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        mixer_options = dict(mixer_options or {})
        self.d_model = d_model
        self.layer_names = []
        blocks = []
        for i, (name, options) in enumerate(expand_layers(layers, depth)):
            options = {**mixer_options.get(name, {}), **options}
            mixer = build_mixer(name, d_model, **options)
            if bidirectional and mixer.causal:
                mixer = Bidirectional(mixer, build_mixer(name, d_model, **options), combine=combine)
            drop = drop_path_rate * i / max(depth - 1, 1)
            blocks.append(Block(mixer, mlp_expand, norm_eps, drop))
            self.layer_names.append(name)
        self.blocks = nn.ModuleList(blocks)
        self.norm = GatedRMSNorm(d_model, eps=norm_eps)
        self.causal = all(block.mixer.causal for block in self.blocks)

    def forward(self, x: Tensor, state: list[Any] | None = None, mask: Tensor | None = None) -> tuple[Tensor, list[Any]]:
        check_sequence(x, self.d_model, mask)
        if state is not None and not self.causal:
            raise ValueError("this backbone is non-causal (bidirectional or non-causal mixers): it has no streaming state; call it with state=None")
        if state is None:
            state = [None] * len(self.blocks)
        elif len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries but the backbone has {len(self.blocks)} layers")
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block(x, layer_state, mask)
            new_state.append(layer_state)
        return self.norm(x), new_state
