"""timm registrations: `timm.create_model("seqmix_<family>_<size>", num_classes=..., drop_path_rate=...)`.

Importing `apps.vision` registers them. Families (every keyword of `SequenceMixerClassifier` overrides them):

| family | layers | scan | MLP | like |
|---|---|---|---|---|
| vit | attention, non-causal, no RoPE | none | 8/3 | ViT (learned positions, average pooling) |
| vim | mamba2 | bidirectional | none | Vision Mamba (Zhu et al., 2024) |
| vil | mlstm | alternate | none | Vision-LSTM (Alkin et al., 2024) |
| vmamba | mamba (S6) | cross | none | VMamba's four-way cross scan (Liu et al., 2024) |
| gdn | gated_deltanet | bidirectional | 8/3 | Gated DeltaNet (Yang et al., 2025) over patches |
| gated_cnn | gated_cnn (no sequence mixer) | none | none | MambaOut (Yu & Wang, 2024), the control |

Sizes: `micro` (about 1-2 M parameters on 28x28 images with patch 4: the Fashion-MNIST benchmark) and
`tiny` (about 4-9 M). No pretrained weights exist: `pretrained=True` fails in timm.
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from apps.vision.model import SequenceMixerClassifier

FAMILIES: dict[str, dict[str, Any]] = {
    "vit": dict(mixer={"name": "attention", "options": {"causal": False, "rope": False}}, scan="none", mlp_expand=8 / 3),
    "vim": dict(mixer={"name": "mamba2", "options": {"d_state": 32}}, scan="bidirectional", mlp_expand=0),
    "vil": dict(mixer={"name": "mlstm", "options": {}}, scan="alternate", mlp_expand=0),
    "vmamba": dict(mixer={"name": "mamba", "options": {"d_state": 16}}, scan="cross", mlp_expand=0),
    "gdn": dict(mixer={"name": "gated_deltanet", "options": {"head_dim": 32}}, scan="bidirectional", mlp_expand=8 / 3),
    "gated_cnn": dict(mixer={"name": "gated_cnn", "options": {}}, scan="none", mlp_expand=0, pos_embed=False),
}
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "micro": {
        "vit": dict(embed_dim=144, depth=6),
        "vim": dict(embed_dim=160, depth=4),
        "vil": dict(embed_dim=192, depth=6),
        "vmamba": dict(embed_dim=96, depth=6),
        "gdn": dict(embed_dim=128, depth=4),
        "gated_cnn": dict(embed_dim=144, depth=8),
    },
    "tiny": {
        "vit": dict(embed_dim=192, depth=12),
        "vim": dict(embed_dim=192, depth=12),
        "vil": dict(embed_dim=192, depth=16),
        "vmamba": dict(embed_dim=128, depth=12),
        "gdn": dict(embed_dim=192, depth=10),
        "gated_cnn": dict(embed_dim=256, depth=12),
    },
}
NAMES = [f"seqmix_{family}_{size}" for size in SIZES for family in FAMILIES]


def pretrained_cfg() -> dict[str, Any]:
    """timm's description of the (untrained) weights: the default input and the layer names."""
    return {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.proj", "classifier": "head", "license": "apache-2.0",
    }


default_cfgs = generate_default_cfgs({name: pretrained_cfg() for name in NAMES})


def create(name: str, pretrained: bool, **kwargs: Any) -> SequenceMixerClassifier:
    """Build variant `name` ("seqmix_<family>_<size>") with `kwargs` over its defaults."""
    family, size = name.removeprefix("seqmix_").rsplit("_", 1)
    arguments = {**FAMILIES[family], **SIZES[size][family], **kwargs}
    return build_model_with_cfg(SequenceMixerClassifier, name, pretrained, **arguments)


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> SequenceMixerClassifier:
        return create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{name}: see apps.vision.variants."
    register_model(entrypoint)


for _name in NAMES:
    _register(_name)
