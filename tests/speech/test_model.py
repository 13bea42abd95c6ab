"""Separation networks: shapes for any length, any mixer or hybrid in the dual path, chunking, causality."""
from __future__ import annotations

import pytest
import torch

from apps.speech.model import ConvTasNetSeparator, DualPathSeparator, overlap_add, split_chunks

ATTENTION = {"name": "attention", "options": {"causal": False, "num_heads": 2}}


def tiny(mixer=ATTENTION, layers=None, **kwargs) -> DualPathSeparator:
    sizes = dict(num_filters=8, kernel_size=8, d_model=8, chunk_size=6, num_blocks=1, mlp_expand=1.0) | kwargs
    return DualPathSeparator(2, mixer, layers or mixer["name"], **sizes)


@pytest.mark.parametrize("frames", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("chunk_size", [2, 6])
def test_chunks_cover_every_frame_twice(frames, chunk_size):
    x = torch.randn(2, frames, 3)
    chunks = split_chunks(x, chunk_size)
    assert chunks.shape[2:] == (chunk_size, 3)
    torch.testing.assert_close(overlap_add(chunks, frames), 2 * x)


@pytest.mark.parametrize("samples", [1, 7, 8, 1001])
def test_dual_path_output_has_the_mixture_length(samples):
    estimates = tiny()(torch.randn(3, samples))
    assert estimates.shape == (3, 2, samples) and torch.isfinite(estimates).all()


@pytest.mark.parametrize(
    "mixer, layers",
    [({"name": "mamba2", "options": {}}, None), ({"name": "gated_deltanet", "options": {}}, None), (ATTENTION, ["mamba2", "attention"])],
)
def test_dual_path_with_other_mixers_and_hybrids(mixer, layers):
    model = tiny(mixer, layers, intra_depth=2)
    assert model(torch.randn(1, 300)).shape == (1, 2, 300)
    names = model.blocks[0].intra.layer_names
    assert names == (layers or [mixer["name"]] * 2)


def test_causal_dual_path_ignores_the_future():
    """Both paths causal: output sample t depends only on input up to t + one encoder window."""
    torch.manual_seed(0)
    model = tiny({"name": "mamba2", "options": {}}, bidirectional_intra=False, bidirectional_inter=False).eval()
    x = torch.randn(1, 400)
    changed = x.clone()
    changed[:, 250:] = torch.randn(1, 150)
    with torch.no_grad():
        before, after = model(x), model(changed)
    window = 8
    torch.testing.assert_close(before[..., : 250 - window], after[..., : 250 - window])
    assert not torch.allclose(before[..., 250:], after[..., 250:])
    bidirectional = tiny({"name": "mamba2", "options": {}}).eval()
    with torch.no_grad():
        assert not torch.allclose(bidirectional(x)[..., :100], bidirectional(changed)[..., :100])


def test_conv_tasnet_baseline_shape():
    model = ConvTasNetSeparator(3, enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=16, msk_num_layers=2, msk_num_stacks=1)
    assert model(torch.randn(2, 999)).shape == (2, 3, 999)


def test_bad_inputs_and_settings_are_named():
    with pytest.raises(ValueError, match=r"shape \(batch, samples\)"):
        tiny()(torch.randn(2, 2, 100))
    with pytest.raises(TypeError, match="floating-point"):
        tiny()(torch.ones(1, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match="kernel_size must be even"):
        tiny(kernel_size=7)
    with pytest.raises(ValueError, match="chunk_size must be even"):
        tiny(chunk_size=5)
