"""Packing, unpacking and padding masks (core.ops.varlen)."""

import pytest
import torch

from core.ops.varlen import cu_seqlens_to_mask, mask_padding, mask_to_cu_seqlens, pack, unpack


def random_mask(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) < 0.6


def test_pack_then_unpack_restores_valid_tokens_and_zeros_padding() -> None:
    mask = random_mask(3, 17)
    x = torch.randn(3, 17, 2, 5, generator=torch.Generator().manual_seed(1))
    packed = pack(x, mask)
    assert packed.shape == (1, int(mask.sum()), 2, 5)
    assert torch.equal(packed[0, : int(mask[0].sum())], x[0][mask[0]])  # row 0 comes first, in order
    restored = unpack(packed, mask)
    assert torch.equal(restored[mask], x[mask])
    assert not restored[~mask].any()


def test_cu_seqlens_and_mask_round_trip() -> None:
    cu_seqlens = torch.tensor([0, 3, 3, 10, 11], dtype=torch.int32)
    mask = cu_seqlens_to_mask(cu_seqlens)
    assert mask.shape == (4, 7)
    assert mask.sum(1).tolist() == [3, 0, 7, 1]
    assert torch.equal(mask[:, :1].squeeze(1), torch.tensor([True, False, True, True]))  # right-padded
    assert torch.equal(mask_to_cu_seqlens(mask), cu_seqlens)


def test_unpack_of_packed_sequences_gives_right_padded_batch() -> None:
    cu_seqlens = torch.tensor([0, 2, 5])
    x = torch.arange(5.0).view(1, 5, 1)
    padded = unpack(x, cu_seqlens_to_mask(cu_seqlens))
    assert padded.squeeze(-1).tolist() == [[0.0, 1.0, 0.0], [2.0, 3.0, 4.0]]


def test_pack_and_unpack_pass_gradients() -> None:
    mask = random_mask(2, 9, seed=2)
    x = torch.randn(2, 9, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(unpack(pack(x, mask), mask).sum(), x)
    assert torch.equal(grad, mask[..., None].expand_as(x).float())


@pytest.mark.parametrize("g_shape", [None, (2, 6, 3), (2, 6, 3, 4)])
def test_mask_padding_zeros_keys_and_decays_of_padded_tokens(g_shape: tuple[int, ...] | None) -> None:
    mask = random_mask(2, 6, seed=3)
    k = torch.full((2, 6, 3, 4), float("nan"))  # padded garbage must not leak through as NaN * 0
    g = None if g_shape is None else -torch.rand(g_shape)
    k_masked, g_masked = mask_padding(k, g, mask)
    assert not k_masked[~mask].isnan().any() and not k_masked[~mask].any()
    assert k_masked[mask].isnan().all()
    if g is None:
        assert g_masked is None
    else:
        assert not g_masked[~mask].any()
        assert torch.equal(g_masked[mask], g[mask])


def test_bad_mask_and_packed_shapes_raise() -> None:
    x = torch.zeros(2, 4, 3)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got torch.int64"):
        pack(x, torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 4\), got 2-D shape \(2, 5\)"):
        mask_padding(torch.zeros(2, 4, 1, 3), None, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"packed must have shape \(1, 8, \.\.\.\) to fill the mask, got \(1, 7, 3\)"):
        unpack(torch.zeros(1, 7, 3), torch.ones(2, 4, dtype=torch.bool))
