"""deltanet, gated_deltanet, deltaproduct, rwkv7 (and RWKV7ChannelMix): checks beyond the generic mixer contract."""
from __future__ import annotations


import pytest
import torch

import core
import core.mixers.deltanet as deltanet_module
import core.mixers.rwkv7 as rwkv7_module
from core.layers import token_shift
from core.mixers.rwkv7 import RWKV7ChannelMix, RWKV7State, TokenShiftState
from core.registry import MixerEntry
from core.state import RecurrentState
from tests.mixers.helpers import assert_close, assert_same_results, assert_states_close, outputs_states_and_gradients, randn, run_in_pieces

D_MODEL = 32
CONFIGS = {
    "deltanet": ("deltanet", {"head_dim": 16}),
    "deltanet-gate-neg-eigval": ("deltanet", {"head_dim": 16, "use_output_gate": True, "allow_neg_eigval": True}),
    "deltanet-no-conv": ("deltanet", {"head_dim": 16, "use_short_conv": False}),
    "gated_deltanet": ("gated_deltanet", {"head_dim": 16, "expand_v": 1.5}),
    "deltaproduct": ("deltaproduct", {"head_dim": 16, "n_h": 2}),
    "deltaproduct-3-no-forget-gate": ("deltaproduct", {"head_dim": 16, "n_h": 3, "use_forget_gate": False}),
    "rwkv7": ("rwkv7", {"head_dim": 16}),
}
NAMES = ["deltanet", "gated_deltanet", "deltaproduct", "rwkv7"]


def make(config: str, dtype: torch.dtype = torch.float64, seed: int = 0, **extra: object) -> core.Mixer:
    name, options = CONFIGS[config]
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL, **{**options, **extra}).to(dtype)


@pytest.mark.parametrize("config", CONFIGS)
def test_chunk_equals_naive_outputs_states_and_gradients(config: str) -> None:
    x = randn(2, 70, D_MODEL)
    assert_same_results(*[outputs_states_and_gradients(make(config, impl=impl), x) for impl in ("naive", "chunk")])


@pytest.mark.parametrize("config", CONFIGS)
def test_state_passing_at_random_splits_equals_one_call(config: str) -> None:
    mixer = make(config)
    x = randn(2, 80, D_MODEL)
    y_full, state_full = mixer(x)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        cuts = sorted(torch.randperm(79, generator=g)[:3].add(1).tolist())
        y, state = run_in_pieces(mixer, x, cuts)
        assert_close(y, y_full)
        assert_states_close(state, state_full)


@pytest.mark.parametrize("config", CONFIGS)
def test_padding_mask_gives_the_states_of_unpadded_sequences(config: str) -> None:
    mixer = make(config)
    lengths = [23, 9, 1]
    T = max(lengths)
    x = randn(len(lengths), T, D_MODEL, seed=99)  # garbage in the padded slots
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, T - n if i % 2 else 0 : T if i % 2 else n] = True  # left and right padding
    y, state = mixer(x, mask=mask)
    for i in range(len(lengths)):
        ref, ref_state = mixer(x[i : i + 1, mask[i]])
        assert_close(y[i][mask[i]], ref[0])
        assert_states_close(state, ref_state, row=i)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_parameter_gets_a_finite_nonzero_gradient(config: str) -> None:
    mixer = make(config)
    y, _ = mixer(randn(2, 30, D_MODEL))
    y.square().mean().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{config}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{config}: parameter {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{config}: parameter {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d_model", [64, 96])
def test_default_options_scale_with_d_model(name: str, d_model: int) -> None:
    torch.manual_seed(0)
    mixer = core.build_mixer(name, d_model).double()
    x = randn(2, 21, d_model)
    y, state = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert state.recurrent.dtype == torch.float64
    assert_close(run_in_pieces(mixer, x, [8])[0], y)


def test_bf16_keeps_a_float32_recurrent_state() -> None:
    for config in ("gated_deltanet", "deltaproduct", "rwkv7"):
        _, state = make(config, torch.bfloat16)(randn(1, 20, D_MODEL, dtype=torch.bfloat16))
        assert state.recurrent.dtype == torch.float32


# --- DeltaNet family --------------------------------------------------------------------------------


def test_deltaproduct_with_one_step_equals_gated_deltanet() -> None:
    gated = make("gated_deltanet")
    product = make("deltaproduct", n_h=1, expand_v=1.5, allow_neg_eigval=False)
    product.load_state_dict(gated.state_dict())
    x = randn(2, 50, D_MODEL)
    (y, state), (y_ref, state_ref) = product(x), gated(x)
    assert_close(y, y_ref)
    assert_states_close(state, state_ref)


def test_deltaproduct_with_two_steps_has_its_own_keys_and_betas() -> None:
    mixer = make("deltaproduct")
    H, K, V = mixer.num_heads, mixer.key_dim, mixer.value_dim
    assert mixer.widths[:2] == [H * K + 2 * H * (K + V), 2 * H]
    assert mixer.conv.conv.weight.shape[0] == mixer.widths[0]  # one convolution over q, k_1, k_2, v_1, v_2
    y, state = mixer(randn(2, 10, D_MODEL))
    assert isinstance(state, RecurrentState) and state.recurrent.shape == (2, H, K, V)
    assert state.conv.shape == (2, 3, mixer.widths[0])


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
def test_negative_eigenvalues_double_beta(allow_neg_eigval: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def spy(q, k, v, beta, g=None, **options):
        seen.update(beta=beta, k=k, q=q)
        return core.ops.delta_rule(q, k, v, beta, g, **options)

    monkeypatch.setattr(deltanet_module, "delta_rule", spy)
    mixer = make("deltanet", allow_neg_eigval=allow_neg_eigval)
    with torch.no_grad():
        mixer.in_proj.weight[mixer.widths[0] :].mul_(10)  # spread the beta logits
        mixer(randn(2, 40, D_MODEL))
    beta = seen["beta"]
    assert beta.min() > 0 and beta.max() < (2 if allow_neg_eigval else 1)
    assert (beta.max() > 1.5) == allow_neg_eigval
    for x in (seen["q"], seen["k"]):  # L2-normalised queries and keys
        assert_close(x.norm(dim=-1), torch.ones_like(x[..., 0]), 1e-5)


# --- RWKV-7 ---------------------------------------------------------------------------------------


def test_token_shift_reads_the_previous_valid_token() -> None:
    x = randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [False, True, True, False, True, False]])
    last = randn(2, 1, 3, seed=2)
    x_prev, new_last = token_shift(x, last, mask)
    assert_close(x_prev[0], torch.cat([last[0], x[0, :5]]))
    assert_close(x_prev[1, [1, 2, 4]], torch.stack([last[1, 0], x[1, 1], x[1, 2]]))
    assert_close(new_last, torch.stack([x[0, 5:], x[1, 4:5]]))
    x_prev, new_last = token_shift(x, None, None)
    assert_close(x_prev[:, 0], torch.zeros(2, 3, dtype=x.dtype))
    assert_close(new_last, x[:, 5:])
    _, unchanged = token_shift(x, last, torch.zeros(2, 6, dtype=torch.bool))
    assert_close(unchanged, last)


def test_rwkv7_state_carries_the_token_shift() -> None:
    mixer = make("rwkv7")
    x = randn(2, 12, D_MODEL)
    y_full, state = mixer(x)
    assert isinstance(state, RWKV7State)
    assert_close(state.shift, x[:, -1:])
    y_head, state_head = mixer(x[:, :7])
    assert_close(torch.cat([y_head, mixer(x[:, 7:], state_head)[0]], 1), y_full)
    forgetful = RWKV7State(state_head.recurrent, torch.zeros_like(state_head.shift))
    assert not torch.allclose(mixer(x[:, 7:], forgetful)[0][:, 0], y_full[:, 7]), "the first token must read the shift"


def test_rwkv7_feeds_the_dplr_op_its_parameterisation(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def spy(q, k, v, a, b, g, **options):
        seen.update(a=a, b=b, g=g, scale=options["scale"])
        return core.ops.dplr_delta_rule(q, k, v, a, b, g, **options)

    monkeypatch.setattr(rwkv7_module, "dplr_delta_rule", spy)
    make("rwkv7")(randn(2, 30, D_MODEL))
    a, b, g = seen["a"], seen["b"], seen["g"]
    assert seen["scale"] == 1.0
    assert g.max() < 0 and g.min() > -0.6066  # decay in (exp(-e^{-1/2}), 1)
    assert_close(a.norm(dim=-1), torch.ones_like(a[..., 0]), 1e-5)  # a = -kappa, kappa unit
    eta = -b / a  # b = kappa * eta, the in-context learning rate in (0, 1)
    assert eta.min() > 0 and eta.max() < 1


def test_rwkv7_channel_mix_streams_and_skips_padding() -> None:
    torch.manual_seed(0)
    cmix = RWKV7ChannelMix(D_MODEL).double()
    x = randn(2, 30, D_MODEL)
    y_full, state = cmix(x)
    assert isinstance(state, TokenShiftState)
    assert_close(run_in_pieces(cmix, x, [1, 13, 14])[0], y_full)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :9] = False
    y, state = cmix(x, mask=mask)
    assert_close(y[1, 9:], cmix(x[1:, 9:])[0][0])
    assert_close(state.shift, x[:, -1:])
    with pytest.raises(TypeError, match="state must be the TokenShiftState"):
        cmix(x, RWKV7State(x, x))


def test_backbone_of_rwkv7_blocks_with_channel_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(core.registry._REGISTRY, "rwkv7_channel_mix", MixerEntry(RWKV7ChannelMix, "RWKV-7"))
    torch.manual_seed(0)
    model = core.Backbone(D_MODEL, 4, layers=["rwkv7", "rwkv7_channel_mix"], mlp_expand=0,
                          mixer_options={"rwkv7": {"head_dim": 16}}).double().eval()
    assert model.layer_names == ["rwkv7", "rwkv7_channel_mix"] * 2
    x = randn(2, 40, D_MODEL)
    y, _ = model(x)
    y1, state = model(x[:, :17])
    y2, _ = model(x[:, 17:], state)
    assert_close(torch.cat([y1, y2], 1), y)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_wrong_state_type_is_rejected(config: str) -> None:
    with pytest.raises(TypeError, match="state must be the"):
        make(config)(randn(1, 3, D_MODEL), state=torch.zeros(1))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("deltanet", {"head_dim": 48}, "not divisible by head_dim"),
        ("deltanet", {"conv_size": 0}, "conv_size must be a positive int"),
        ("gated_deltanet", {"expand_v": 0.3}, "whole number"),
        ("deltaproduct", {"n_h": 0}, "n_h must be a positive int"),
        ("deltaproduct", {"n_h": 2.0}, "n_h must be a positive int"),
        ("rwkv7", {"head_dim": 24}, "not divisible by head_dim"),
        ("rwkv7", {"decay_low_rank_dim": 0}, "decay_low_rank_dim must be a positive int"),
    ],
)
def test_bad_options_raise_clear_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        core.build_mixer(name, 64, **options)


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown option.*num_householder.*accepts: n_h"):
        core.build_mixer("deltaproduct", 64, num_householder=2)
