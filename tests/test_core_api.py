"""The public API of `core`: registry, Backbone, layers."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import core
from core.layers import GatedRMSNorm, ShortConv


def test_import_core_needs_no_lightning_or_hydra() -> None:
    code = "import sys, core; core.available_mixers(); bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'triton')]; print(bad); assert not bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_mixer_name_lists_available() -> None:
    with pytest.raises(ValueError, match="Available mixers: .*attention"):
        core.build_mixer("atention", 32)
    with pytest.raises(ValueError, match="Did you mean 'attention'"):
        core.build_mixer("atention", 32)


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(ValueError, match="unknown option.*num_haeds.*accepts"):
        core.build_mixer("attention", 32, num_haeds=2)


def test_every_mixer_cites_a_paper() -> None:
    papers = core.mixer_papers()
    assert set(papers) == set(core.available_mixers())
    assert all(len(p) > 10 for p in papers.values())


def test_layer_pattern_repeats_to_depth() -> None:
    names = [n for n, _ in core.expand_layers(["mamba2", "mamba2", {"name": "attention", "window": 8}], 6)]
    assert names == ["mamba2", "mamba2", "attention"] * 2
    assert core.expand_layers([{"name": "attention", "window": 8}], 1) == [("attention", {"window": 8})]
    with pytest.raises(ValueError, match="empty"):
        core.expand_layers([], 2)


def test_hybrid_backbone_streams_with_state() -> None:
    torch.manual_seed(0)
    model = core.Backbone(32, 3, layers=["mamba2", "attention", "gla"], mixer_options={"attention": {"num_heads": 2}}).double().eval()
    assert model.layer_names == ["mamba2", "attention", "gla"]
    assert model.causal
    x = torch.randn(2, 50, 32, dtype=torch.float64)
    y, _ = model(x)
    y1, state = model(x[:, :17])
    y2, state = model(x[:, 17:18], state)
    y3, _ = model(x[:, 18:], state)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y)


def test_bidirectional_backbone_is_non_causal() -> None:
    torch.manual_seed(0)
    model = core.Backbone(32, 2, layers="gla", bidirectional=True, combine="concat")
    assert not model.causal
    x = torch.randn(1, 20, 32)
    x2 = x.clone()
    x2[:, -1] += 1
    assert not torch.allclose(model(x)[0][:, 0], model(x2)[0][:, 0])
    with pytest.raises(ValueError, match="non-causal"):
        model(x, state=model(x)[1])


def test_backbone_rejects_wrong_state_length() -> None:
    model = core.Backbone(16, 2, layers="attention", mixer_options={"attention": {"num_heads": 2}})
    with pytest.raises(ValueError, match="state has 1 entries"):
        model(torch.randn(1, 3, 16), state=[None])


def test_short_conv_matches_padded_conv_and_streams() -> None:
    torch.manual_seed(0)
    conv = ShortConv(6, kernel_size=4, bias=True, activation=None).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    ref = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x.transpose(1, 2), (3, 0)), conv.conv.weight, conv.conv.bias, groups=6
    ).transpose(1, 2)
    y, tail = conv(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(tail, x[:, -3:])
    y1, s = conv(x[:, :2])
    y2, _ = conv(x[:, 2:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), ref)


def test_short_conv_mask_treats_padding_as_absent() -> None:
    torch.manual_seed(0)
    conv = ShortConv(4, kernel_size=3).double()
    x = torch.randn(1, 8, 4, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, False, True, True, False, True]])
    y, tail = conv(x, mask=mask)
    valid = x[:, mask[0]]
    y_ref, tail_ref = conv(valid)
    torch.testing.assert_close(y[:, mask[0]], y_ref)
    torch.testing.assert_close(tail, tail_ref)


def test_gated_rms_norm_orders() -> None:
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    norm_first = GatedRMSNorm(8, norm_before_gate=True)
    gate_first = GatedRMSNorm(8, norm_before_gate=False, group_size=4)
    rms = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5)  # noqa: E731
    torch.testing.assert_close(norm_first(x, z), rms(x) * torch.nn.functional.silu(z))
    gated = (x * torch.nn.functional.silu(z)).view(3, 2, 4)
    torch.testing.assert_close(gate_first(x, z), rms(gated).view(3, 8))
    with pytest.raises(ValueError, match="divisible"):
        GatedRMSNorm(8, group_size=3)
