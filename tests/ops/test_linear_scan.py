"""linear_scan and log_linear_scan: the parallel forms against the token loop, state passing, padding, errors."""

import pytest
import torch
import torch.nn.functional as F

from core.ops import linear_scan, log_linear_scan, mask_scan_padding
from core.ops.linear_scan import two_level

F64 = torch.float64
LENGTHS = [1, 63, 64, 65, 1000]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(B: int, T: int, D: int, complex_: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decays a (|a| in (0.5, 1), rotating when complex), inputs b and an initial state, float64 / complex128."""
    rng = gen(seed)
    a = 0.5 + 0.5 * torch.rand(B, T, D, generator=rng, dtype=F64)
    b, h0 = torch.randn(B, T, D, generator=rng, dtype=F64), torch.randn(B, D, generator=rng, dtype=F64)
    if complex_:
        a = torch.polar(a, torch.rand(B, T, D, generator=rng, dtype=F64))
        b, h0 = torch.complex(b, torch.randn_like(b)), torch.complex(h0, torch.randn_like(h0))
    return a, b, h0


def outputs_and_grads(fn, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """(h, h_T, gradients of every input) of fn(*inputs) -> (h, h_T) under a random linear loss."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    h, final = fn(*leaves)
    rng = gen(seed)
    loss = sum((y * torch.randn(y.shape, generator=rng, dtype=F64)).real.sum() for y in (h, final))
    return [h, final, *torch.autograd.grad(loss, leaves)]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float = 1e-10) -> None:
    names = ["h", "final state"] + [f"gradient of input {i}" for i in range(len(actual) - 2)]
    for name, x, y in zip(names, actual, expected):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def scan(impl: str):
    return lambda a, b, h0: linear_scan(a, b, initial_state=h0, output_final_state=True, impl=impl)


def log_scan(impl: str):
    return lambda log_a, log_b, h0: log_linear_scan(log_a, log_b, initial_state=h0, output_final_state=True, impl=impl)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_chunk_matches_naive_outputs_states_and_gradients(T: int, complex_: bool) -> None:
    inputs = list(make_inputs(2, T, 5, complex_, seed=T))
    assert_all_close(outputs_and_grads(scan("chunk"), inputs), outputs_and_grads(scan("naive"), inputs))


@pytest.mark.parametrize("reverse", [False, True])
def test_two_level_scan_over_several_blocks(monkeypatch: pytest.MonkeyPatch, reverse: bool) -> None:
    monkeypatch.setattr(two_level, "BLOCK_ELEMENTS", 7 * 2 * 3)  # blocks of 7 tokens
    a, b, h0 = make_inputs(2, 100, 3, complex_=False)
    expected, state = b.clone(), h0
    for t in range(99, -1, -1) if reverse else range(100):
        expected[:, t] += a[:, t] * state
        state = expected[:, t]
    torch.testing.assert_close(two_level.scan_(a, b.clone(), h0, reverse=reverse), expected, rtol=1e-12, atol=1e-12)


def test_chunk_matches_naive_with_a_zero_and_negative_decay() -> None:
    a, b, h0 = make_inputs(1, 65, 4, complex_=False)
    a = a * torch.where(torch.rand(a.shape, generator=gen(3)) < 0.3, -1.0, 1.0).to(F64)
    a[:, 10] = 0.0
    assert_all_close(outputs_and_grads(scan("chunk"), [a, b, h0]), outputs_and_grads(scan("naive"), [a, b, h0]))


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_state_passing_continues_the_sequence(impl: str) -> None:
    a, b, h0 = make_inputs(2, 90, 4, complex_=True)
    h, final = linear_scan(a, b, initial_state=h0, output_final_state=True, impl=impl)
    h1, mid = linear_scan(a[:, :37], b[:, :37], initial_state=h0, output_final_state=True, impl=impl)
    h2, end = linear_scan(a[:, 37:], b[:, 37:], initial_state=mid, output_final_state=True, impl=impl)
    torch.testing.assert_close(torch.cat([h1, h2], dim=1), h)
    torch.testing.assert_close(end, final)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_masked_tokens_leave_the_state_unchanged(impl: str) -> None:
    a, b, h0 = make_inputs(2, 40, 3, complex_=False)
    mask = torch.rand(2, 40, generator=gen(5)) < 0.6
    h, final = linear_scan(*mask_scan_padding(a, b, mask), initial_state=h0, output_final_state=True, impl=impl)
    for i in range(2):
        valid = (a[i : i + 1, mask[i]], b[i : i + 1, mask[i]])
        ref, ref_final = linear_scan(*valid, initial_state=h0[i : i + 1], output_final_state=True)
        torch.testing.assert_close(h[i, mask[i]], ref[0])
        torch.testing.assert_close(final[i], ref_final[0])


def test_low_precision_inputs_keep_their_dtype_with_a_float32_state() -> None:
    a, b, _ = make_inputs(2, 70, 4, complex_=False)
    h, final = linear_scan(a.bfloat16(), b.bfloat16(), output_final_state=True)
    assert h.dtype == torch.bfloat16 and final.dtype == torch.float32
    h, final = linear_scan(torch.polar(a.float(), a.float()), b.float(), output_final_state=True)
    assert h.dtype == torch.complex64 and final.dtype == torch.complex64


# --- log space (minGRU) ---------------------------------------------------------------------------


def mingru_logs(B: int, T: int, D: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """minGRU's log(1 - z), log(z) + log(g(v)) and a positive initial state."""
    rng = gen(seed)
    k, v = 2 * torch.randn(B, T, D, generator=rng, dtype=F64), 2 * torch.randn(B, T, D, generator=rng, dtype=F64)
    log_g = torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))
    return -F.softplus(k), -F.softplus(-k) + log_g, torch.rand(B, D, generator=rng, dtype=F64)


@pytest.mark.parametrize("T", LENGTHS)
def test_log_space_scan_matches_the_sequential_mode(T: int) -> None:
    inputs = list(mingru_logs(2, T, 5, seed=T))
    assert_all_close(outputs_and_grads(log_scan("chunk"), inputs), outputs_and_grads(log_scan("naive"), inputs))


def test_log_space_scan_with_padding_has_finite_gradients() -> None:
    log_a, log_b, h0 = mingru_logs(2, 150, 4)
    mask = torch.ones(2, 150, dtype=torch.bool)
    mask[0, :70] = False  # a long left padding: log b = -inf over whole chunks
    inputs = list(mask_scan_padding(log_a, log_b, mask, log_space=True)) + [h0]
    chunk, naive = outputs_and_grads(log_scan("chunk"), inputs), outputs_and_grads(log_scan("naive"), inputs)
    assert all(torch.isfinite(x).all() for x in chunk)
    assert_all_close(chunk, naive)
    ref = log_linear_scan(log_a[:1, 70:], log_b[:1, 70:], initial_state=h0[:1])[0]
    torch.testing.assert_close(chunk[0][0, 70:], ref[0])


# --- errors ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"b must have shape \(B, T, D\) as a"):
        linear_scan(a, b[:, :4])
    with pytest.raises(ValueError, match=r"a must have shape \(B, T, D\)"):
        linear_scan(a[0], b[0])
    with pytest.raises(TypeError, match="floating-point .* or complex"):
        linear_scan(a.long(), b)
    with pytest.raises(ValueError, match="T of a and b is 0"):
        linear_scan(a[:, :0], b[:, :0])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(B, D\)"):
        linear_scan(a, b, initial_state=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="initial_state is complex"):
        linear_scan(a, b, initial_state=torch.zeros(2, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="log_a must be a floating-point"):
        log_linear_scan(a.to(torch.complex64), b)
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        linear_scan(a, b, impl="fast")
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\)"):
        mask_scan_padding(a, b, torch.ones(2, 4, dtype=torch.bool))
