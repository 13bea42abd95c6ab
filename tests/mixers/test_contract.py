"""The mixer contract, checked for every registered mixer (core/mixer.py states it)."""
from __future__ import annotations

import pytest
import torch

import core
from tests.mixers.helpers import assert_close, randn, run_in_pieces

D_MODEL = 64
MIXERS = core.available_mixers()


def make(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> core.Mixer:
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL).to(dtype).eval()


def test_registry_lists_the_foundation_mixers() -> None:
    for name in ["attention", "linear_attention", "retnet", "gla", "mamba2"]:
        assert name in MIXERS


@pytest.mark.parametrize("name", MIXERS)
def test_shape_and_dtype_are_kept(name: str) -> None:
    mixer = make(name, torch.float32)
    for T in (1, 63, 64, 65):
        x = randn(2, T, D_MODEL, dtype=torch.float32)
        y, _ = mixer(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MIXERS)
def test_state_passing_at_random_splits_equals_one_call(name: str) -> None:
    mixer = make(name)
    x = randn(2, 150, D_MODEL)
    y_full, _ = mixer(x)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        cuts = sorted(torch.randperm(149, generator=g)[:3].add(1).tolist())
        assert_close(run_in_pieces(mixer, x, cuts)[0], y_full)


@pytest.mark.parametrize("name", MIXERS)
def test_token_by_token_decoding_equals_full_forward(name: str) -> None:
    mixer = make(name)
    x = randn(2, 40, D_MODEL)
    y_full, _ = mixer(x)
    assert_close(run_in_pieces(mixer, x, list(range(1, 40)))[0], y_full)


@pytest.mark.parametrize("name", MIXERS)
def test_causality(name: str) -> None:
    mixer = make(name)
    x = randn(1, 70, D_MODEL)
    x2 = x.clone()
    x2[:, 33:] = randn(1, 37, D_MODEL, seed=9)
    y, _ = mixer(x)
    y2, _ = mixer(x2)
    assert_close(y[:, :33], y2[:, :33])
    assert not torch.allclose(y[:, 33:], y2[:, 33:])


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_mask_equals_unpadded_sequences(name: str, side: str) -> None:
    mixer = make(name)
    lengths = [37, 20]
    T = max(lengths)
    seqs = [randn(1, n, D_MODEL, seed=10 + i) for i, n in enumerate(lengths)]
    x = torch.zeros(len(lengths), T, D_MODEL, dtype=torch.float64)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        where = slice(T - n, T) if side == "left" else slice(0, n)
        x[i, where] = s[0] + 0  # padded slots hold garbage in real life; zeros elsewhere
        mask[i, where] = True
    x = torch.where(mask[..., None], x, randn(*x.shape, seed=99))
    y, state = mixer(x, mask=mask)
    tail = randn(len(lengths), 5, D_MODEL, seed=50)
    y_next, _ = mixer(tail, state)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        ref, ref_state = mixer(s)
        ref_next, _ = mixer(tail[i : i + 1], ref_state)
        assert_close(y[i][mask[i]], ref[0])
        assert_close(y_next[i], ref_next[0])
        assert torch.isfinite(y[i]).all()


@pytest.mark.parametrize("name", MIXERS)
def test_long_and_awkward_lengths(name: str) -> None:
    mixer = make(name, torch.float32)
    x = randn(1, 1000, D_MODEL, dtype=torch.float32)
    y_full, _ = mixer(x)
    torch.testing.assert_close(run_in_pieces(mixer, x, [333, 777])[0], y_full, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trains_without_nan(name: str, dtype: torch.dtype) -> None:
    mixer = make(name, dtype).train()
    x = randn(2, 65, D_MODEL, dtype=dtype).requires_grad_()
    y, _ = mixer(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trains_under_bf16_autocast(name: str, dtype: torch.dtype) -> None:
    """float32 parameters, projections in bf16 by autocast, float32 or bf16 inputs: what Lightning's bf16-mixed does."""
    mixer = make(name, torch.float32).train()
    x = randn(2, 33, D_MODEL, dtype=dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = mixer(x)
    y.float().square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MIXERS)
def test_bad_input_raises_clear_errors(name: str) -> None:
    mixer = make(name, torch.float32)
    with pytest.raises(ValueError, match="shape"):
        mixer(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match="d_model"):
        mixer(torch.randn(1, 5, D_MODEL + 1))
    with pytest.raises(TypeError, match="floating-point"):
        mixer(torch.ones(1, 5, D_MODEL, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        mixer(torch.randn(1, 5, D_MODEL), mask=torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("name", MIXERS)
def test_bidirectional_wrapper(name: str) -> None:
    torch.manual_seed(0)
    fwd, bwd = core.build_mixer(name, D_MODEL).double(), core.build_mixer(name, D_MODEL).double()
    bi = core.Bidirectional(fwd, bwd)
    x = randn(2, 30, D_MODEL)
    y, state = bi(x)
    assert state is None
    assert_close(y, fwd(x)[0] + bwd(x.flip(1))[0].flip(1))
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(bi(x2)[0][:, 0], y[:, 0]), "the first output must see the last token"
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 22:] = False
    y_masked, _ = bi(x, mask=mask)
    assert_close(y_masked[1, :22], bi(x[1:, :22])[0][0])
    with pytest.raises(ValueError, match="non-causal"):
        bi(x, state=[])
