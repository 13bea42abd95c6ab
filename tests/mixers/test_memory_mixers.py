"""Titans (MAL, MAG, MAC), Miras (and its presets Moneta, Yaad, Memora) and ATLAS: the chunked op against
the token loop through each mixer, the Miras axes, the presets, gradients through the memory, errors.
The contract (state passing, decoding, causality, padding, dtypes) is checked in test_contract.py."""
from __future__ import annotations

import math

import pytest
import torch

import core
from core.mixers.atlas import PolynomialFeatures
from tests.mixers.helpers import assert_close, randn, run_in_pieces

D_MODEL = 32
MEMORY_MIXERS = ["titans_mal", "titans_mag", "titans_mac", "miras", "moneta", "yaad", "memora", "atlas"]


def make(name: str, seed: int = 0, **options) -> core.Mixer:
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL, **options).double()


def outputs_and_gradients(mixer: core.Mixer, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    y, _ = mixer(x)
    (y * randn(*y.shape, seed=5)).sum().backward()
    return y, {"x": x.grad, **{n: p.grad for n, p in mixer.named_parameters()}}


def test_all_memory_mixers_are_registered() -> None:
    assert set(MEMORY_MIXERS) <= set(core.available_mixers())


@pytest.mark.parametrize("name", MEMORY_MIXERS)
def test_chunked_op_matches_token_loop_through_the_mixer(name: str) -> None:
    x = randn(2, 21, D_MODEL, seed=1)
    y_loop, g_loop = outputs_and_gradients(make(name, impl="naive"), x)
    y_chunk, g_chunk = outputs_and_gradients(make(name, impl="chunk"), x)
    assert_close(y_chunk, y_loop)
    assert g_loop.keys() == g_chunk.keys()
    for n in g_loop:
        assert_close(g_chunk[n], g_loop[n], 1e-8, f"gradient of {n}:")


MIRAS_AXES = [
    dict(memory="vector", optimizer="gd"),
    dict(memory="matrix", objective="lp", p=1.5, residual_norm=False),
    dict(memory="mlp", depth=3, objective="huber", retention="lq", q=3.0, optimizer="gd"),
    dict(memory="matrix", retention="kl", optimizer="gd", residual_norm=False),
    dict(memory="mlp", optimizer="muon", chunk_size=1),
]


@pytest.mark.parametrize("options", MIRAS_AXES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_miras_axes_pass_state_at_any_split_and_decode(options: dict) -> None:
    mixer = make("miras", **options)
    x = randn(2, 40, D_MODEL, seed=2)
    y, _ = mixer(x)
    assert torch.isfinite(y).all()
    assert_close(run_in_pieces(mixer, x, [3, 16, 17, 29])[0], y)
    assert_close(run_in_pieces(mixer, x[:, :12], list(range(1, 12)))[0], y[:, :12])


def test_presets_configure_the_memory() -> None:
    specs = {name: make(name).memory.spec for name in ("moneta", "yaad", "memora", "atlas")}
    assert (specs["moneta"].objective, specs["moneta"].p, specs["moneta"].retention, specs["moneta"].q) == ("lp", 3.0, "lq", 4.0)
    assert (specs["yaad"].objective, specs["yaad"].retention, specs["yaad"].optimizer) == ("huber", "decay", "gd")
    assert (specs["memora"].retention, specs["memora"].optimizer) == ("kl", "gd")
    assert (specs["atlas"].optimizer, specs["atlas"].window) == ("muon", 4)
    assert specs["atlas"].key_dim == math.comb(8 + 2, 2)  # head_dim 8, degree 2: 1 + 8 + 36 features
    assert make("moneta", p=2.5).memory.spec.p == 2.5


def test_polynomial_features_give_the_polynomial_kernel() -> None:
    features = PolynomialFeatures(num_heads=2, dim=5, degree=3).double()
    q, k = randn(4, 2, 5, seed=3), randn(4, 2, 5, seed=4)
    a = torch.nn.functional.softplus(features.raw_coefficients)  # [H, degree + 1]
    dot = (q * k).sum(-1)  # [4, H]
    kernel = sum(a[:, i] * dot**i for i in range(4))
    assert_close((features(q) * features(k)).sum(-1), kernel)
    assert_close(a[0], torch.tensor([1.0, 1.0, 0.5, 1 / 6], dtype=torch.float64), 1e-6)  # initialised in float32
    assert features(q).shape[-1] == features.feature_dim == math.comb(5 + 3, 3)


@pytest.mark.parametrize("name", ["miras", "titans_mac", "atlas"])
def test_early_tokens_reach_late_outputs_through_the_memory(name: str) -> None:
    """Beyond the short convolution (4 tokens) and, for MAC, the attention segment (16 tokens), only the
    memory's weights carry token 2 to token 36."""
    mixer = make(name)
    x = randn(1, 37, D_MODEL, seed=6).requires_grad_()
    y, _ = mixer(x)
    (grad,) = torch.autograd.grad(y[:, -1].sum(), x)
    assert grad[:, 2].abs().sum() > 0


def test_titans_mac_reads_the_memory_of_the_previous_segments() -> None:
    """Without its memory (theta = 0 and r = 1 keep M at W_init) MAC's attention is local to a segment:
    an early change reaches a later segment only through the memory."""
    mixer = make("titans_mac", segment_size=8)
    x = randn(1, 24, D_MODEL, seed=7)
    x2 = x.clone()
    x2[:, 1] += 1.0
    assert not torch.allclose(mixer(x)[0][:, 16:], mixer(x2)[0][:, 16:])
    with torch.no_grad():
        H = mixer.lmm.memory.num_heads  # gate biases: H for theta, then H for the retention r
        mixer.lmm.memory.gate_proj.bias[:H] = -1e4
        mixer.lmm.memory.gate_proj.bias[H : 2 * H] = 1e4
    y, y2 = mixer(x)[0], mixer(x2)[0]
    assert_close(y[:, 16:], y2[:, 16:])
    assert not torch.allclose(y[:, 1:8], y2[:, 1:8])


@pytest.mark.parametrize("name", ["titans_mal", "titans_mag"])
def test_titans_persistent_tokens_stay_visible_beyond_the_window(name: str) -> None:
    """With the memory frozen (theta = 0 and r = 1 keep M at W_init) the persistent tokens reach outputs far
    past the window only as attention sinks; without the sinks they would drop out of the window."""
    mixer = make(name, window=8, num_persistent=3)
    assert mixer.attention.num_sinks == 3
    with torch.no_grad():
        H = mixer.memory.memory.num_heads  # gate biases: H for theta, then H for the retention r
        mixer.memory.memory.gate_proj.bias[:H] = -1e4
        mixer.memory.memory.gate_proj.bias[H : 2 * H] = 1e4
    x = randn(1, 40, D_MODEL, seed=9)
    y = mixer(x)[0]
    with torch.no_grad():
        mixer.persistent[1] += 1.0
    assert (mixer(x)[0][:, 20:] - y[:, 20:]).abs().amin() > 0
    mixer.attention.num_sinks = 0  # the old behaviour: P slides out of the window after 8 tokens
    y_no_sinks = mixer(x)[0]
    with torch.no_grad():
        mixer.persistent[1] -= 1.0
    assert_close(mixer(x)[0][:, 20:], y_no_sinks[:, 20:])


@pytest.mark.parametrize("name", ["titans_mal", "titans_mag", "titans_mac"])
def test_titans_without_persistent_memory(name: str) -> None:
    mixer = make(name, num_persistent=0)
    x = randn(2, 30, D_MODEL, seed=8)
    assert_close(run_in_pieces(mixer, x, [7, 19])[0], mixer(x)[0])


@pytest.mark.parametrize("name", ["titans_mal", "titans_mag", "titans_mac"])
def test_titans_trains_on_parity_without_diverging(name: str) -> None:
    """Regression: with theta_max 1.0 the MLP memory's inner steps diverged to NaN within 3 AdamW steps here."""
    torch.manual_seed(0)
    embed, head = torch.nn.Embedding(2, 64), torch.nn.Linear(64, 2)
    backbone = core.Backbone(64, 2, layers=name)
    parameters = [*embed.parameters(), *backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)
    for _ in range(8):
        bits = torch.randint(0, 2, (16, 64))
        logits = head(backbone(embed(bits))[0])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), (bits.cumsum(1) % 2).flatten())
        assert torch.isfinite(loss), f"{name} diverged"
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("miras", dict(memory="tree"), ValueError, "miras: neural memory: kind must be one of"),
        ("miras", dict(retention="kl", optimizer="momentum"), ValueError, "supports optimizer='gd' only"),
        ("miras", dict(memory="vector", optimizer="muon"), ValueError, "a vector memory has none"),
        ("miras", dict(chunk_size=0), ValueError, "miras: chunk_size must be a positive int"),
        ("miras", dict(expand=0.1), ValueError, "must be a positive whole number"),
        ("miras", dict(head_dim=5), ValueError, "not divisible by head_dim=5"),
        ("miras", dict(theta_max=0.0), ValueError, "theta_max must be > 0"),
        ("miras", dict(rank=3), ValueError, "unknown option"),
        ("memora", dict(optimizer="muon"), ValueError, "supports optimizer='gd' only"),
        ("atlas", dict(degree=0), ValueError, "atlas: degree must be a positive int"),
        ("atlas", dict(window=0), ValueError, "window must be a positive int"),
        ("titans_mal", dict(window=0), ValueError, "titans_mal: window must be a positive int"),
        ("titans_mag", dict(num_persistent=-1), ValueError, "num_persistent must be an int >= 0"),
        ("titans_mac", dict(num_heads=3), ValueError, "must be an even whole number"),
        ("titans_mac", dict(segment_size=0), ValueError, "segment_size must be a positive int"),
    ],
)
def test_bad_options_raise_clear_errors(name: str, options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        core.build_mixer(name, D_MODEL, **options)


def test_a_state_of_another_mixer_is_refused() -> None:
    x = randn(1, 5, D_MODEL)
    _, mac_state = make("titans_mac")(x)
    with pytest.raises(TypeError, match="MemoryLayerState"):
        make("miras")(x, mac_state)
    with pytest.raises(TypeError, match="TitansState"):
        make("titans_mal")(x, mac_state)
