"""Sequence mixers and a backbone in pure PyTorch.

    import core
    mixer = core.build_mixer("gla", d_model=256)
    y, state = mixer(x)                      # x: (batch, time, 256)
    model = core.Backbone(256, depth=6, layers=["mamba2", "mamba2", "attention"])
"""
from core.backbone import Backbone, Block, expand_layers
from core.bidirectional import Bidirectional
from core.mixer import Mixer
from core.registry import available_mixers, build_mixer, mixer_papers, register_mixer

__all__ = [
    "Backbone",
    "Bidirectional",
    "Block",
    "Mixer",
    "available_mixers",
    "build_mixer",
    "expand_layers",
    "mixer_papers",
    "register_mixer",
]
