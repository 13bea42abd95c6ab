"""The vision models: timm registrations, scan orders, class tokens, the gated-CNN control, clear errors."""
from __future__ import annotations

import pytest
import timm
import torch

import core
from apps.vision.layers import GatedConvMixer
from apps.vision.model import SequenceMixerClassifier
from apps.vision.scan import ScannedMixer, grid_order, inverse_order, scan_orders, scanned
from apps.vision.variants import FAMILIES, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_variant_builds_with_timm(name):
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, in_chans=1, img_size=16)
    assert model.pretrained_cfg["architecture"] == name and model.pretrained_cfg["classifier"] == "head"
    images = torch.randn(2, 1, 16, 16)
    assert model(images).shape == (2, 7)
    features = model.forward_features(images)
    assert features.shape == (2, 16, model.num_features)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(images).shape == (2, 3) and model.get_classifier().out_features == 3


def test_variants_are_listed_and_have_no_pretrained_weights():
    assert set(timm.list_models("seqmix_*")) == set(NAMES)
    assert set(FAMILIES) == {"vit", "vim", "vil", "vmamba", "gdn", "gated_cnn"}
    with pytest.raises(RuntimeError):
        timm.create_model("seqmix_vit_micro", pretrained=True)


def test_micro_variants_have_one_to_two_million_parameters_on_fashion_mnist():
    for family in ("vit", "vim", "vil", "gdn", "gated_cnn"):
        model = timm.create_model(f"seqmix_{family}_micro", num_classes=10, in_chans=1, img_size=28, stem="conv")
        assert 1.0e6 <= sum(p.numel() for p in model.parameters()) <= 2.0e6, family


# ---------------------------------------------------------------- scan orders


def test_scan_orders_are_exact_inverses():
    x = torch.randn(2, 13, 4)
    for cls_position in (None, 0, 6, 12):
        height, width = (3, 4)
        n = 12 + (cls_position is not None)
        for scan in ("alternate", "cross"):
            for layer in (0, 1):
                for order in scan_orders(scan, layer, height, width, cls_position):
                    assert sorted(order.tolist()) == list(range(n))
                    assert torch.equal(x[:, :n][:, order][:, inverse_order(order)], x[:, :n])
                    assert torch.equal(order[inverse_order(order)], torch.arange(n))


def test_grid_orders_read_rows_or_columns_and_keep_the_class_token_in_place():
    assert grid_order(2, 3, False, None).tolist() == [0, 1, 2, 3, 4, 5]
    assert grid_order(2, 3, True, None).tolist() == [0, 3, 1, 4, 2, 5]
    # class token at sequence index 2: patches 0, 1 before it, patches 2.. shifted by one
    assert grid_order(2, 3, True, 2).tolist() == [0, 4, 2, 1, 5, 3, 6]
    reverse, = scan_orders("alternate", 1, 2, 3, None)
    assert reverse.tolist() == [5, 4, 3, 2, 1, 0]
    assert len(scan_orders("cross", 0, 2, 3, None)) == 4


def test_scanned_mixer_runs_the_mixer_on_the_reordered_tokens():
    torch.manual_seed(0)
    mixer = core.build_mixer("gla", 8)
    x = torch.randn(2, 6, 8)
    reversed_scan = ScannedMixer([mixer], [torch.arange(5, -1, -1)])
    assert not reversed_scan.causal
    torch.testing.assert_close(reversed_scan(x)[0], mixer(x.flip(1))[0].flip(1))
    column = grid_order(2, 3, True, None)
    one_way = ScannedMixer([mixer], [column])
    torch.testing.assert_close(one_way(x)[0], mixer(x[:, column])[0][:, inverse_order(column)])
    assert ScannedMixer([mixer], [torch.arange(6)]).causal


def test_scans_wrap_causal_mixers_only():
    build_gla = lambda: core.build_mixer("gla", 8)  # noqa: E731
    assert isinstance(scanned("bidirectional", build_gla, 0, (2, 3), None), core.Bidirectional)
    assert isinstance(scanned("cross", build_gla, 0, (2, 3), None), ScannedMixer)
    assert len(scanned("cross", build_gla, 0, (2, 3), None).mixers) == 4
    assert scanned("alternate", build_gla, 0, (2, 3), None).causal  # even layers read row-major, unwrapped
    assert not scanned("alternate", build_gla, 1, (2, 3), None).causal
    assert scanned("none", build_gla, 0, (2, 3), None).causal
    attention = scanned("cross", lambda: core.build_mixer("attention", 8, causal=False), 0, (2, 3), None)
    assert type(attention).__name__ != "ScannedMixer"
    with pytest.raises(ValueError, match="scan='diagonal' is not one of"):
        scanned("diagonal", build_gla, 0, (2, 3), None)


def test_scanned_models_see_the_whole_image():
    """A change in the last patch changes the output at the first patch under every non-causal scan."""
    torch.manual_seed(0)
    images = torch.randn(1, 1, 8, 8)
    changed = images.clone()
    changed[..., 6:, 6:] += 1.0
    for scan in ("bidirectional", "alternate", "cross"):
        model = SequenceMixerClassifier(8, 2, 1, 4, embed_dim=16, depth=2, mixer={"name": "gla", "options": {}}, scan=scan)
        first = lambda x: model.forward_features(x)[0, 0]  # noqa: E731
        assert not torch.allclose(first(images), first(changed)), scan
    causal = SequenceMixerClassifier(8, 2, 1, 4, embed_dim=16, depth=2, mixer={"name": "gla", "options": {}}, scan="none")
    torch.testing.assert_close(causal.forward_features(images)[0, 0], causal.forward_features(changed)[0, 0])


# ---------------------------------------------------------------- class token, hybrids, gated CNN


@pytest.mark.parametrize("position, index", [("start", 0), ("middle", 8), ("end", 16)])
def test_class_token_position_and_token_pooling(position, index):
    model = SequenceMixerClassifier(
        16, 4, 3, 5, embed_dim=16, depth=2, mixer={"name": "mamba2", "options": {"d_state": 8}}, scan="bidirectional",
        class_token=True, cls_position=position, global_pool="token",
    )
    assert model.cls_index == index
    images = torch.randn(2, 3, 16, 16)
    features = model.forward_features(images)
    assert features.shape == (2, 17, 16)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, index])
    model.reset_classifier(5, "avg")
    patches = torch.cat([features[:, :index], features[:, index + 1 :]], dim=1)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), patches.mean(1))


def test_hybrid_layer_pattern():
    model = SequenceMixerClassifier(
        8, 2, 1, 3, embed_dim=16, depth=4, mixer={"name": "mamba2", "options": {"d_state": 8}},
        layers=["mamba2", {"name": "attention", "causal": False}], scan="bidirectional",
    )
    assert model.layer_names == ["mamba2", "attention"] * 2
    assert isinstance(model.blocks[0].mixer, core.Bidirectional) and not isinstance(model.blocks[1].mixer, core.Bidirectional)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_gated_conv_mixer_is_local():
    """One 3x3 gated-convolution layer: a token's output depends only on its 3x3 neighbourhood."""
    torch.manual_seed(0)
    mixer = GatedConvMixer(8, (5, 5), kernel_size=3)
    x = torch.randn(1, 25, 8)
    changed = x.clone()
    changed[0, 24] += 1.0  # token (4, 4)
    y, y_changed = mixer(x)[0], mixer(changed)[0]
    torch.testing.assert_close(y[0, 0], y_changed[0, 0])  # (0, 0) is far away
    assert not torch.allclose(y[0, 18], y_changed[0, 18])  # (3, 3) is a neighbour
    with pytest.raises(ValueError, match="5x5 grid of patch tokens, got 26"):
        mixer(torch.randn(1, 26, 8))


# ---------------------------------------------------------------- errors


def test_wrong_image_size_and_colour_are_named():
    model = timm.create_model("seqmix_vit_micro", num_classes=10, in_chans=1, img_size=28, embed_dim=16, depth=1)
    with pytest.raises(ValueError, match="built for 28x28 images but got 32x32.*cannot be interpolated"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="takes grayscale images .* got RGB ones"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="not divisible by patch_size=5"):
        SequenceMixerClassifier(28, 5, 1, 10)
    with pytest.raises(ValueError, match="power of 2"):
        SequenceMixerClassifier(24, 6, 1, 10, stem="conv")
    with pytest.raises(ValueError, match="needs a class token"):
        SequenceMixerClassifier(8, 2, 1, 10, embed_dim=16, depth=1, global_pool="token")
    with pytest.raises(ValueError, match="take no class token|takes no class token"):
        timm.create_model("seqmix_gated_cnn_micro", img_size=8, class_token=True)
    with pytest.raises(ValueError, match="unknown mixer 'mamba3'"):
        SequenceMixerClassifier(8, 2, 1, 10, embed_dim=16, depth=1, mixer={"name": "mamba3", "options": {}})
