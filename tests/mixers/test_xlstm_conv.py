"""mlstm, slstm, hyena, dilated_conv, aaren and the xLSTM preset: checks beyond the generic mixer contract."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import core
from core import presets
from core.mixers.hyena import causal_conv
from tests.mixers.helpers import assert_close, randn, run_in_pieces

D_MODEL = 32


def build(name: str, seed: int = 0, **options: object) -> core.Mixer:
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL, **options).double()


def randomise(mixer: core.Mixer, std: float = 0.3, seed: int = 2) -> None:
    """Add noise to every parameter, so zero-initialised gates and recurrent weights take part."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- mLSTM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_mlstm_chunk_equals_naive_outputs_and_parameter_gradients(forget_gate: str) -> None:
    x = randn(2, 100, D_MODEL)
    results = []
    for impl in ("naive", "chunk"):
        mixer = build("mlstm", forget_gate=forget_gate, impl=impl)
        randomise(mixer, std=0.1)
        y, state = mixer(x)
        (y * randn(*y.shape, seed=5)).sum().backward()
        results.append((y, state.cell, {n: p.grad for n, p in mixer.named_parameters()}))
    (y_n, cell_n, grads_n), (y_c, cell_c, grads_c) = results
    assert_close(y_c, y_n)
    for a, b in zip(cell_c, cell_n):
        assert_close(a, b)
    for name in grads_n:
        assert_close(grads_c[name], grads_n[name], msg=f"gradient of {name}:")


# --- sLSTM ----------------------------------------------------------------------------------------


def slstm_reference(layer: core.Mixer, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """xLSTM's vanilla sLSTM cell step by step, with dense block-diagonal matrices and the reference's
    rules: m starts at 0, m = i~ while n == 0, and both gates clamped to <= 1."""
    B, T, D = x.shape
    H, dh = layer.num_heads, layer.head_dim
    x_c, _ = layer.conv(x)
    W_if, W_zo = torch.block_diag(*layer.if_proj.weight), torch.block_diag(*layer.zo_proj.weight)  # [H 2dh, D]
    R = torch.block_diag(*layer.recurrent)  # [D, H 4dh]: head h's units feed only head h's gates
    h, c, n, m = (x.new_zeros(B, H, dh) for _ in range(4))
    outputs = []
    for t in range(T):
        wx = torch.cat([(x_c[:, t] @ W_if.T).view(B, H, 2, dh), (x[:, t] @ W_zo.T).view(B, H, 2, dh)], dim=2)
        raw = wx + (h.reshape(B, D) @ R).view(B, H, 4, dh) + layer.bias.view(H, 4, dh)
        i, f, z, o = raw.unbind(2)
        log_f_plus_m = m + (F.logsigmoid(f) if layer.forget_gate == "sigmoid" else f)
        m = torch.where(n == 0, i, torch.maximum(i, log_f_plus_m))
        i_gate = torch.exp(i - m).clamp_max(1)
        f_gate = torch.exp(log_f_plus_m - m).clamp_max(1)
        c = f_gate * c + i_gate * torch.tanh(z)
        n = f_gate * n + i_gate
        h = torch.sigmoid(o) * c / n
        outputs.append(h)
    return layer.norm(torch.stack(outputs, dim=1)), (h, c, n, m)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_slstm_matches_literal_per_step_reference(forget_gate: str) -> None:
    layer = build("slstm", forget_gate=forget_gate)
    randomise(layer)
    x = randn(2, 60, D_MODEL)
    y, state = layer(x)
    y_ref, (h, c, n, m) = slstm_reference(layer, x)
    assert_close(y, y_ref)
    for name, actual, expected in zip("hcnm", (state.h, state.c, state.n, state.m), (h, c, n, m)):
        assert_close(actual, expected, msg=f"state.{name}:")


def test_slstm_ffn_option_adds_a_gated_mlp_after_the_cell() -> None:
    plain, with_ffn = build("slstm"), build("slstm", ffn_expand=4 / 3)
    x = randn(1, 10, D_MODEL)
    s = plain(x)[0]
    assert_close(with_ffn(x)[0], s + with_ffn.ffn(with_ffn.ffn_norm(s)))


# --- Hyena ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("L, out_len", [(1, 1), (5, 1), (5, 3), (64, 64), (100, 37)])
def test_fft_causal_conv_equals_direct_sum(L: int, out_len: int) -> None:
    u, h = randn(2, L, 3, seed=3), randn(L, 3, seed=4)
    direct = torch.stack([sum(h[j] * u[:, t - j] for j in range(t + 1)) for t in range(L)], dim=1)
    assert_close(causal_conv(u, h, out_len), direct[:, L - out_len :], 1e-12)


def test_hyena_order_3_streams_and_counts_only_valid_tokens_toward_max_len() -> None:
    mixer = build("hyena", order=3, max_len=40)
    x = randn(2, 40, D_MODEL)
    assert_close(run_in_pieces(mixer, x, [1, 17, 30])[0], mixer(x)[0])
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[:, :10] = False  # 50 tokens, 40 of them valid: within max_len
    y, state = mixer(torch.cat([randn(2, 10, D_MODEL), x], dim=1), mask=mask)
    assert_close(y[:, 10:], mixer(x)[0])
    with pytest.raises(ValueError, match=r"hyena: a sequence reached 41 valid tokens but max_len=40"):
        mixer(x[:, :1], state)


# --- dilated convolutions ----------------------------------------------------------------------------


def test_dilated_conv_receptive_field() -> None:
    mixer = build("dilated_conv", kernel_size=3, dilations=(1, 2, 4))
    assert mixer.receptive_field == 15 and build("dilated_conv").receptive_field == 127
    x = randn(1, 60, D_MODEL)
    x2 = x.clone()
    x2[:, 20] += 1.0
    changed = (mixer(x2)[0] - mixer(x)[0]).abs().amax(-1)[0] > 1e-12  # [T]
    assert changed.nonzero().squeeze(1).tolist() == list(range(20, 35))


# --- Aaren ----------------------------------------------------------------------------------------


def test_aaren_parallel_equals_streaming_and_explicit_attention_with_learned_query() -> None:
    mixer = build("aaren", head_dim=8)
    x = randn(2, 70, D_MODEL)
    y, _ = mixer(x)
    H, dh = mixer.num_heads, mixer.head_dim
    k, v = mixer.k_proj(x).view(2, 70, H, dh), mixer.v_proj(x).view(2, 70, H, dh)
    scores = (k * mixer.query).sum(-1) / dh**0.5  # [B, T, H], one learned query per head
    explicit = torch.stack([(torch.softmax(scores[:, : t + 1], 1)[..., None] * v[:, : t + 1]).sum(1) for t in range(70)], 1)
    assert_close(y, mixer.out_proj(explicit.flatten(-2)))
    assert_close(run_in_pieces(mixer, x, list(range(1, 70)))[0], y)
    streaming = build("aaren", head_dim=8, impl="naive")
    assert_close(streaming(x)[0], y)


# --- xLSTM preset ------------------------------------------------------------------------------------


def test_xlstm_preset_builds_a_backbone_that_streams() -> None:
    layers = presets.xlstm(ratio=(2, 1), mlstm_options={"num_heads": 2})
    assert layers == [{"name": "mlstm", "num_heads": 2}] * 2 + [{"name": "slstm", "ffn_expand": 4 / 3}]
    torch.manual_seed(0)
    model = core.Backbone(D_MODEL, depth=6, layers=layers, mlp_expand=0).double()
    assert model.layer_names == ["mlstm", "mlstm", "slstm"] * 2
    assert all(block.mlp is None for block in model.blocks) and model.blocks[2].mixer.ffn is not None
    x = randn(2, 30, D_MODEL)
    y, _ = model(x)
    _, state = model(x[:, :11])
    assert_close(model(x[:, 11:], state)[0], y[:, 11:])
    with pytest.raises(ValueError, match=r"ratio must be \(mLSTM blocks, sLSTM blocks\)"):
        presets.xlstm(ratio=(0, 0))


# --- padding anywhere -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlstm", "slstm", "hyena", "dilated_conv", "aaren"])
def test_padding_with_holes_equals_each_sequence_alone_and_its_state_continues_it(name: str) -> None:
    mixer = build(name, **({"dilations": (1, 2)} if name == "dilated_conv" else {}))
    randomise(mixer, std=0.1)
    x, tail = randn(3, 30, D_MODEL), randn(3, 4, D_MODEL, seed=3)
    mask = torch.rand(3, 30, generator=torch.Generator().manual_seed(4)) < 0.6
    mask[2] = False  # a row with no valid token keeps the initial state
    y, state = mixer(x, mask=mask)
    y_next, _ = mixer(tail, state)
    for b in range(3):
        alone, alone_state = mixer(x[b : b + 1, mask[b]]) if mask[b].any() else (None, None)
        if alone is not None:
            assert_close(y[b, mask[b]], alone[0])
        assert_close(y_next[b], mixer(tail[b : b + 1], alone_state)[0][0])


# --- option errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("mlstm", dict(num_heads=5), r"mlstm: num_heads=5 must divide inner = proj_factor \* d_model=64"),
        ("mlstm", dict(proj_factor=1.01), r"mlstm: d_model \* proj_factor = 32 \* 1.01 must be a positive whole number"),
        ("slstm", dict(forget_gate="tanh"), r"slstm: forget_gate must be one of 'sigmoid', 'exp', got 'tanh'"),
        ("slstm", dict(conv_kernel=0), r"slstm: conv_kernel must be a positive int, got 0"),
        ("hyena", dict(order=1), r"hyena: order must be an int >= 2"),
        ("hyena", dict(emb_dim=4), r"hyena: emb_dim must be an odd int >= 3"),
        ("dilated_conv", dict(dilations=()), r"dilated_conv: dilations is empty"),
        ("dilated_conv", dict(activation="tanh"), r"dilated_conv: activation must be one of 'silu', 'gelu', 'relu'"),
        ("aaren", dict(head_dim=5), r"aaren: d_model=32 is not divisible by head_dim=5"),
    ],
)
def test_bad_options_raise_clear_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        core.build_mixer(name, D_MODEL, **options)


@pytest.mark.parametrize("name", ["mlstm", "slstm", "hyena", "dilated_conv", "aaren"])
def test_a_state_of_another_mixer_is_refused(name: str) -> None:
    mixer = build(name)
    _, foreign = build("dilated_conv" if name != "dilated_conv" else "aaren")(randn(1, 3, D_MODEL))
    with pytest.raises(TypeError, match=rf"{name} state must be the"):
        mixer(randn(1, 3, D_MODEL), foreign)
