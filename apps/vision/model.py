"""SequenceMixerClassifier: any core mixer or hybrid over image patches, with timm's model face.

Images (B, C, H, W) -> stem -> patch tokens (B, N, D) + learned positions -> optional class token ->
`core.Block`s, each mixer wrapped in a 2-D scan (`apps.vision.scan`) -> RMSNorm -> pooling -> linear head.
The same class builds a plain ViT (non-causal attention, scan none), Vision Mamba (bidirectional),
Vision-LSTM (alternate), VMamba-style cross scans, and the MambaOut gated-CNN control (`gated_cnn`
layers, no sequence mixer): see `apps.vision.variants` for the registered timm names.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from timm.layers import to_2tuple
from torch import Tensor, nn

import core
from apps.vision.layers import GatedConvMixer, build_stem
from apps.vision.scan import scanned

GATED_CNN = "gated_cnn"  # the layer name of GatedConvMixer (not a core mixer: it needs the 2-D grid)
POOLS = ("avg", "token")
CLS_POSITIONS = ("start", "middle", "end")
COLOR_NAMES = {1: "grayscale", 3: "RGB"}


class SequenceMixerClassifier(nn.Module):
    """Image classifier over patch tokens with any `core` mixer or hybrid.

    Args:
        img_size: input height and width (an int or a pair); fixed, since positions and scans are built for it.
        patch_size: tokens are patch_size x patch_size patches, a grid of img_size / patch_size.
        in_chans: image channels (1 grayscale, 3 RGB).
        num_classes: classes of the head (0: no head, forward returns pooled features).
        embed_dim: width of the tokens (d_model).
        depth: number of blocks.
        mixer: {"name": a core mixer or "gated_cnn", "options": its keyword options} (Hydra group model/mixer).
        layers: the layer pattern (a name or a hybrid list, see `core.expand_layers`); None: mixer's name.
            `mixer.options` apply to the layers of that name.
        scan: how causal mixers read the grid: none, bidirectional, alternate, cross (`apps.vision.scan`).
        mlp_expand: gated-MLP width over embed_dim after each mixer; 0: no MLP (Mamba-style blocks).
        stem: "patch" (ViT linear patches) or "conv" (overlapping stride-2 convolutions, patch_size a power of 2).
        pos_embed: add learned absolute positions to the patch tokens.
        class_token: add a learned class token at `cls_position` ("start", "middle", "end" of the sequence).
        global_pool: "avg" (mean of the patch tokens) or "token" (the class token).
        drop_rate: dropout before the head. drop_path_rate: stochastic depth, growing linearly to this value.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 128,
        depth: int = 6,
        mixer: Mapping[str, Any] | None = None,
        layers: str | Sequence[str | Mapping[str, Any]] | None = None,
        scan: str = "bidirectional",
        mlp_expand: float = 8 / 3,
        stem: str = "patch",
        pos_embed: bool = True,
        class_token: bool = False,
        cls_position: str = "start",
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = tuple(to_2tuple(img_size)), patch_size, in_chans
        if any(side % patch_size for side in self.img_size):
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size={patch_size}; choose another model.patch_size")
        if cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position={cls_position!r} is not one of {', '.join(CLS_POSITIONS)}")
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.grid[0] * self.grid[1]
        self.cls_index = None if not class_token else {"start": 0, "middle": num_patches // 2, "end": num_patches}[cls_position]
        self.num_features = self.embed_dim = embed_dim
        mixer = dict(mixer or {"name": "attention", "options": {"causal": False}})
        mixer_options = {mixer["name"]: dict(mixer.get("options") or {})}

        layer_specs = core.expand_layers(layers or mixer["name"], depth)  # [(name, per-layer options)]
        self.layer_names = [name for name, _ in layer_specs]
        if GATED_CNN in self.layer_names and class_token:
            raise ValueError("gated_cnn layers convolve the patch grid and take no class token: use class_token=False")
        self.stem = build_stem(stem, in_chans, embed_dim, patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, embed_dim) * 0.02) if pos_embed else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        blocks = []
        for i, (name, options) in enumerate(layer_specs):
            options = {**mixer_options.get(name, {}), **options}
            build = self.mixer_factory(name, embed_dim, options)
            drop_path = drop_path_rate * i / max(depth - 1, 1)
            blocks.append(core.Block(scanned(scan, build, i, self.grid, self.cls_index), mlp_expand, norm_eps, drop_path))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.global_pool = global_pool
        self.reset_classifier(num_classes, global_pool)

    def mixer_factory(self, name: str, d_model: int, options: Mapping[str, Any]) -> Callable[[], core.Mixer]:
        """A function building one mixer of layer `name` (a fresh one per call, for scans with several directions)."""
        if name == GATED_CNN:
            return lambda: GatedConvMixer(d_model, self.grid, **options)
        return lambda: core.build_mixer(name, d_model, **options)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` classes (0: none); optionally a new pooling ("avg" or "token")."""
        if global_pool is not None:
            if global_pool not in POOLS:
                raise ValueError(f"global_pool={global_pool!r} is not one of {', '.join(POOLS)}")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token: build the model with class_token=True")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def check_images(self, x: Tensor) -> None:
        """ValueError unless x is a float batch (B, in_chans, *img_size)."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected floating-point images (normalised), got {x.dtype}")
        channels = x.shape[1]
        if channels != self.in_chans:
            raise ValueError(
                f"the model takes {COLOR_NAMES.get(self.in_chans, f'{self.in_chans}-channel')} images "
                f"(in_chans={self.in_chans}) but got {COLOR_NAMES.get(channels, f'{channels}-channel')} ones "
                f"({channels} channels); convert the images or build the model with in_chans={channels}"
            )
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"the model was built for {self.img_size[0]}x{self.img_size[1]} images but got "
                f"{x.shape[2]}x{x.shape[3]}; its learned positions and scan orders cannot be interpolated: resize the "
                f"images or build the model with img_size={tuple(x.shape[2:])}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, in_chans, H, W) -> normalised tokens (B, N, embed_dim), the class token (if any) at cls_index."""
        self.check_images(x)
        tokens = self.stem(x)  # [B, N, D]
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        if self.cls_token is not None:
            cls = self.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, : self.cls_index], cls, tokens[:, self.cls_index :]], dim=1)
        for block in self.blocks:
            tokens, _ = block(tokens)
        return self.norm(tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, N, embed_dim) -> logits (B, num_classes), or pooled features (B, embed_dim) if pre_logits."""
        if self.global_pool == "token":
            x = x[:, self.cls_index]
        elif self.cls_token is not None:
            x = torch.cat([x[:, : self.cls_index], x[:, self.cls_index + 1 :]], dim=1).mean(1)
        else:
            x = x.mean(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
