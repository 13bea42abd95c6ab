"""selective_scan: the blocked parallel form against the token loop, spec identities, state passing, errors."""

import pytest
import torch
import torch.nn.functional as F

from core.ops import linear_recurrence, selective_scan
from core.ops.selective_scan import chunk

F64 = torch.float64
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make_inputs(b: int, D: int, T: int, N: int, G: int | None, seed: int = 0, dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    """Every input of selective_scan; G None gives B, C of shape (b, N, T), else (b, G, N, T)."""
    rng = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    groups = () if G is None else (G,)
    inputs = dict(
        u=randn(b, D, T), delta=randn(b, D, T) - 1, A=-torch.rand(D, N, generator=rng, dtype=F64) * 4,
        B=randn(b, *groups, N, T), C=randn(b, *groups, N, T), D=randn(D), z=randn(b, D, T),
        delta_bias=randn(D), initial_state=randn(b, D, N),
    )
    return {name: x.to(dtype) for name, x in inputs.items()}


def outputs_and_grads(inputs: dict[str, torch.Tensor], impl: str, seed: int = 1) -> dict[str, torch.Tensor]:
    leaves = {name: x.detach().requires_grad_() for name, x in inputs.items()}
    y, final = selective_scan(**leaves, delta_softplus=True, output_final_state=True, impl=impl)
    rng = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=rng, dtype=F64)).sum() for x in (y, final))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "final_state": final, **{f"d{name}": g for name, g in zip(leaves, grads)}}


def assert_all_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float = 1e-10) -> None:
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("T", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("G", [None, 2], ids=["shared_BC", "2_groups"])
def test_chunk_matches_naive_outputs_states_and_every_gradient(T: int, G: int | None) -> None:
    inputs = make_inputs(2, 6, T, 5, G, seed=T)
    assert_all_close(outputs_and_grads(inputs, "chunk"), outputs_and_grads(inputs, "naive"))


def test_chunk_matches_naive_over_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk, "MIN_BLOCK", 1)
    monkeypatch.setattr(chunk, "BLOCK_ELEMENTS", 11 * 2 * 6 * 5)  # blocks of 11 tokens: 2 sub-chunks of 4, then 3 single steps
    inputs = make_inputs(2, 6, 100, 5, 3)
    assert_all_close(outputs_and_grads(inputs, "chunk"), outputs_and_grads(inputs, "naive"))


def test_naive_matches_the_log_space_closed_form() -> None:
    """Spec 4.4(c): h_t = e^{L_t} (h_0 + sum_{j<=t} e^{-L_j} delta_j u_j B_j) with L = cumsum(delta A)."""
    x = make_inputs(1, 3, 40, 4, None)
    delta = F.softplus(x["delta"])
    L = torch.cumsum(delta[..., None] * x["A"][:, None, :], dim=2)  # [b, D, T, N]
    writes = (delta * x["u"])[..., None] * x["B"].transpose(1, 2)[:, None]
    h = L.exp() * (x["initial_state"][:, :, None] + torch.cumsum((-L).exp() * writes, dim=2))
    y_ref = torch.einsum("bdtn,bnt->bdt", h, x["C"])
    run = dict(initial_state=x["initial_state"], output_final_state=True, impl="naive")
    y, final = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], **run)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, h[:, :, -1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_mamba1_equals_gla_with_one_value_per_channel(impl: str) -> None:
    """Spec 10: per channel d, q = C, k = delta B, v = u_d, vector log decay g = delta A_d, scale 1."""
    x = make_inputs(2, 6, 70, 5, None)
    delta = F.softplus(x["delta"])
    run = dict(initial_state=x["initial_state"], output_final_state=True, impl=impl)
    y, final = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], **run)
    time_major = delta.transpose(1, 2)[..., None]  # [b, T, D, 1]
    q = x["C"].transpose(1, 2)[:, :, None].expand(-1, -1, 6, -1)  # [b, T, D, N]
    k = time_major * x["B"].transpose(1, 2)[:, :, None]
    o, state = linear_recurrence(
        q, k, x["u"].transpose(1, 2)[..., None], time_major * x["A"], scale=1.0,
        initial_state=x["initial_state"][..., None], output_final_state=True, impl=impl,
    )
    torch.testing.assert_close(y, o[..., 0].transpose(1, 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, state[..., 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_state_passing_continues_the_sequence(impl: str) -> None:
    x = make_inputs(2, 6, 90, 5, 3)
    full, final = selective_scan(**x, delta_softplus=True, output_final_state=True, impl=impl)

    def part(sl: slice) -> dict[str, torch.Tensor]:
        return {n: t[..., sl] if n in ("u", "delta", "B", "C", "z") else t for n, t in x.items()}

    y1, mid = selective_scan(**part(slice(0, 41)), delta_softplus=True, output_final_state=True, impl=impl)
    y2, end = selective_scan(**{**part(slice(41, 90)), "initial_state": mid}, delta_softplus=True, output_final_state=True, impl=impl)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), full)
    torch.testing.assert_close(end, final)


def test_zero_delta_leaves_the_state_unchanged() -> None:
    x = make_inputs(1, 4, 30, 3, None)
    delta = F.softplus(x["delta"])
    pad = torch.zeros(30, dtype=torch.bool)
    pad[5:12] = True
    run = dict(A=x["A"], initial_state=x["initial_state"], output_final_state=True)
    y, final = selective_scan(x["u"], delta.masked_fill(pad, 0.0), B=x["B"], C=x["C"], **run)
    keep = ~pad
    y_ref, final_ref = selective_scan(x["u"][..., keep], delta[..., keep], B=x["B"][..., keep], C=x["C"][..., keep], **run)
    torch.testing.assert_close(y[..., keep], y_ref)
    torch.testing.assert_close(final, final_ref)


def test_low_precision_inputs_keep_their_dtype_with_a_float32_state() -> None:
    x = make_inputs(2, 6, 65, 5, None, dtype=torch.bfloat16)
    y, final = selective_scan(**x, delta_softplus=True, output_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(final).all()


def test_bad_inputs_raise_clear_errors() -> None:
    x = make_inputs(2, 6, 10, 5, None, dtype=torch.float32)
    u, delta, A, B, C = (x[n] for n in ("u", "delta", "A", "B", "C"))
    with pytest.raises(ValueError, match=r"u must have shape \(batch, channels, T\)"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, channels, T\) as u"):
        selective_scan(u, delta[..., :9], A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(channels, N\)"):
        selective_scan(u, delta, A[:5], B, C)
    with pytest.raises(ValueError, match=r"B must have shape \(batch, N, T\)"):
        selective_scan(u, delta, A, B[:, :4], C)
    with pytest.raises(ValueError, match="groups of B and C must divide"):
        selective_scan(u, delta, A, torch.randn(2, 4, 5, 10), torch.randn(2, 4, 5, 10))
    with pytest.raises(ValueError, match="same number of groups"):
        selective_scan(u, delta, A, torch.randn(2, 2, 5, 10), C)
    with pytest.raises(TypeError, match="u must be a floating-point"):
        selective_scan(u.long(), delta, A, B, C)
    with pytest.raises(ValueError, match=r"z must have shape"):
        selective_scan(u, delta, A, B, C, z=u[:1])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(batch, channels, N\)"):
        selective_scan(u, delta, A, B, C, initial_state=torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match="T of u is 0"):
        selective_scan(u[..., :0], delta[..., :0], A, B[..., :0], C[..., :0])
