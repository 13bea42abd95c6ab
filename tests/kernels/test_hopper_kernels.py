"""The Gluon kernels for Hopper against the Triton kernels they stand in for, on the same inputs (GPU only, `-m gpu`):
the dQ/dK/dg pass (`_bwd_dqk_kernel`), the delta rule's reverse state pass (`_delta_dh_kernel`) and its WY backward
(`_wy_bwd_kernel`).

Both sum in float32 from the same 16-bit tiles; they differ by their roundings to 16 bits (the Triton kernel rounds
the gated rows of dO and V before its state products, this one scales the float32 products), about 2e-3 relative
RMS (the WY backward: B + Bᵀ rounded as B, and the dg shares summed in another order). The op-level GPU tests (test_delta_rule_triton, test_linear_recurrence_triton) check it against the chunk form
through the whole backward wherever K = V = 128 on a Hopper GPU.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import rel_rms
from tests.kernels.helpers import needs_cuda

hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs a Hopper GPU")


def gluon_cases(test):
    """On a Hopper GPU (`-m gpu`), for gated and ungated inputs, T in {1, 65, 1000, 2048}, bf16 and fp16."""
    marks = [pytest.mark.gpu, needs_cuda, hopper, pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"]),
             pytest.mark.parametrize("T", [1, 65, 1000, 2048]),
             pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])]
    for mark in reversed(marks):
        test = mark(test)
    return test


def dqk_inputs(B: int, T: int, H: int, gated: bool, dtype: torch.dtype, seed: int) -> dict:
    from kernels.common.chunks import chunk_layout
    from kernels.common.cumsum import LOG2E, chunk_local_cumsum

    gen = torch.Generator(device="cuda").manual_seed(seed)
    layout = chunk_layout(B, T, 64, None)
    x = {n: torch.randn(B, T, H, 128, device="cuda", generator=gen).to(dtype) for n in ("q", "k", "v", "do")}
    for n in ("h", "dh"):
        x[n] = torch.randn(layout.total_chunks, H, 128, 128, device="cuda", generator=gen).to(dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda", generator=gen) + 3) if gated else None
    x["gc"] = None if g is None else chunk_local_cumsum(g, layout, 64, scale=LOG2E)
    return x | {"layout": layout, "scale": 128**-0.5}


@gluon_cases
def test_gpu_gluon_dqk_matches_triton(gated: bool, T: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels.linear_recurrence.chunk import dqk_pass

    x = dqk_inputs(B=3, T=T, H=4, gated=gated, dtype=dtype, seed=T + gated)
    args = [x[n] for n in ("q", "k", "v", "gc", "h", "do", "dh")] + [x["scale"], x["layout"]]
    dq, dk, dg = dqk_pass(*args)
    assert dg is None or dg.shape[0] == 1  # one share: the Gluon kernel ran
    monkeypatch.setenv("SEQMIX_GLUON", "0")
    dq_ref, dk_ref, dg_ref = dqk_pass(*args)
    assert dg_ref is None or dg_ref.shape[0] == 2  # the Triton kernel's two K tiles
    assert rel_rms(dq.float(), dq_ref.float()) < 5e-3
    assert rel_rms(dk.float(), dk_ref.float()) < 5e-3
    if gated:
        assert rel_rms(dg.sum(0), dg_ref.sum(0)) < 5e-3
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


@gluon_cases
def test_gpu_gluon_wy_backward_matches_triton(gated: bool, T: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels.common.hopper import serves
    from kernels.delta_rule.chunk import _common, _wy_backward

    B, H = 3, 4
    x = dqk_inputs(B=B, T=T, H=H, gated=gated, dtype=dtype, seed=T + 2 * gated)  # q, do, dh stand in for U~, dX, dK's part
    gen = torch.Generator(device="cuda").manual_seed(T)
    k = torch.nn.functional.normalize(x["k"].float(), dim=-1).to(dtype)
    beta = torch.rand(B, T, H, device="cuda", generator=gen).to(dtype)
    dk_part = torch.randn(B, T, H, 128, device="cuda", generator=gen).to(dtype)
    dg_lr = torch.randn(1, B, T, H, device="cuda", generator=gen) if gated else None
    assert serves(k, x["v"], None)
    args = (k, x["v"], beta, x["gc"], x["h"], x["q"], x["do"], dk_part, dg_lr, torch.float32, x["layout"],
            _common(x["q"], x["v"], x["layout"]))
    out = _wy_backward(*args)
    monkeypatch.setenv("SEQMIX_GLUON", "0")
    ref = _wy_backward(*args)
    for name, a, b in zip(("dk", "dv", "dbeta", "dg"), out, ref):
        if b is None:
            assert a is None
            continue
        assert torch.isfinite(a).all(), name
        assert rel_rms(a.float(), b.float()) < 5e-3, name


def state_pass_inputs(T: int, gated: bool, dtype: torch.dtype) -> dict:
    """Random inputs of the state passes with a T = (I + A)^-1 of normalised
    keys, and (for T in {65, 2048}) a float32 state entering the pass (h0, or the final state's gradient dht)."""
    from kernels.delta_rule.chunk import _common, _inverse

    B, H = 3, 4
    x = dqk_inputs(B=B, T=T, H=H, gated=gated, dtype=dtype, seed=T + 3 * gated)
    gen = torch.Generator(device="cuda").manual_seed(T)
    x["k"] = torch.nn.functional.normalize(x["k"].float(), dim=-1).to(dtype)
    x["beta"] = (2 * torch.rand(B, T, H, device="cuda", generator=gen)).to(dtype)
    x["Tm"] = _inverse(x["k"], x["beta"], x["gc"], x["layout"], _common(x["q"], x["v"], x["layout"]))
    x["state"] = torch.randn(B, H, 128, 128, device="cuda", generator=gen) if T in (65, 2048) else None
    return x


def check_state_pass(gluon_fn, triton_fn, x: dict, names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """gluon_fn(x) against triton_fn(x) on float32 upcasts of x (exact dots): no less accurate than triton_fn(x) on
    the 16-bit inputs. (The two kernels round to 16 bits in other places; without a gate, where the state sums over
    every chunk, their outputs differ by up to 6e-3 relative RMS from each other, less from the float32 pass.)"""
    out = gluon_fn(x)
    monkeypatch.setenv("SEQMIX_GLUON", "0")
    triton_16 = triton_fn(x)
    exact = triton_fn({n: t.float() if isinstance(t, torch.Tensor) else t for n, t in x.items()})
    for name, a, b, ref in zip(names, out, triton_16, exact):
        if ref is None:
            assert a is None
            continue
        assert torch.isfinite(a).all(), name
        error, triton_error = rel_rms(a.float(), ref), rel_rms(b.float(), ref)
        assert error < 1e-2 and error <= 1.2 * triton_error + 1e-4, (name, error, triton_error)


@gluon_cases
def test_gpu_gluon_forward_state_pass_matches_triton(gated: bool, T: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output, h, U~ and (with h0, for T in {65, 2048}) the final states of `state_hopper.delta_h` against the
    Triton forward (`_delta_h_kernel`, then `_fwd_o_kernel`); and without the output, h, U~ and the final states alone."""
    from kernels.delta_rule import state_hopper
    from kernels.delta_rule.chunk import _forward

    def args(x: dict) -> tuple:
        return x["k"], x["v"], x["beta"], x["gc"], x["Tm"], x["state"], x["state"] is not None

    def gluon_fn(x: dict) -> tuple:
        h, u, ht, o = state_hopper.delta_h(*args(x), x["q"], x["scale"])
        assert all(torch.equal(a, b) for a, b in zip((h, u), state_hopper.delta_h(*args(x))[:2]))  # same without o
        return o, h, u, ht

    def triton_fn(x: dict) -> tuple:
        o, ht, _, h, u = _forward(x["q"], x["k"], x["v"], x["beta"], x["gc"], x["scale"], x["state"], x["layout"],
                                  x["state"] is not None, save=True, save_states=True)
        return o, h, u, ht

    check_state_pass(gluon_fn, triton_fn, state_pass_inputs(T, gated, dtype), ("o", "h", "u", "ht"), monkeypatch)


@gluon_cases
def test_gpu_gluon_reverse_pass_matches_triton(gated: bool, T: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """dh, dX and (with dht, for T in {65, 2048}) dh0 of `state_hopper.delta_dh` against `_bwd_dv_kernel` (the chunk-local
    part of dU~, which the Gluon kernel forms itself) and `_delta_dh_kernel`."""
    from kernels.delta_rule import state_hopper
    from kernels.delta_rule.chunk import _common, _reverse_pass

    def args(x: dict) -> tuple:
        return x["q"], x["k"], x["beta"], x["gc"], x["Tm"], x["do"], x["state"], x["state"] is not None, x["scale"]

    def gluon_fn(x: dict) -> tuple:
        return state_hopper.delta_dh(*args(x))

    def triton_fn(x: dict) -> tuple:
        return _reverse_pass(*args(x), x["layout"], _common(x["q"], x["v"], x["layout"]))

    check_state_pass(gluon_fn, triton_fn, state_pass_inputs(T, gated, dtype), ("dh", "dx", "dh0"), monkeypatch)


@pytest.mark.gpu
@needs_cuda
@hopper
def test_gpu_gluon_kernels_compile_per_length_class_not_per_length() -> None:
    """The WY backward compiles once for every length; the dQ/dK pass once per class of T (1, a multiple of 16, other:
    Triton's integer specialisation, kept for speed, see dqk_hopper.py). After one length of each class, others
    compile nothing."""
    from kernels.delta_rule import wy_hopper
    from kernels.delta_rule.chunk import _common, _wy_backward
    from kernels.linear_recurrence import dqk_hopper
    from kernels.linear_recurrence.chunk import dqk_pass

    def run(T: int) -> None:
        x = dqk_inputs(B=2, T=T, H=4, gated=True, dtype=torch.bfloat16, seed=T)
        dq, dk, dg = dqk_pass(*[x[n] for n in ("q", "k", "v", "gc", "h", "do", "dh")], x["scale"], x["layout"])
        _wy_backward(x["k"], x["v"], torch.rand_like(x["gc"]).to(x["k"].dtype), x["gc"], x["h"], x["q"], x["do"], dk, dg,
                     torch.float32, x["layout"], _common(x["q"], x["v"], x["layout"]))

    def compiled(kernel) -> int:
        return sum(len(cache[0]) for cache in kernel.device_caches.values())

    # Counted as differences: earlier tests in the process may have compiled other dtypes and gates.
    wy_start, dqk_start = compiled(wy_hopper._wy_bwd_hopper_kernel), compiled(dqk_hopper._bwd_dqk_hopper_kernel)
    run(1)
    wy_once = compiled(wy_hopper._wy_bwd_hopper_kernel)
    assert wy_once - wy_start <= 1
    for T in (64, 100):
        run(T)
    dqk_classes = compiled(dqk_hopper._bwd_dqk_hopper_kernel)
    assert dqk_classes - dqk_start <= 3
    for T in (33, 63, 65, 1000, 2048, 4097):
        run(T)
    assert compiled(dqk_hopper._bwd_dqk_hopper_kernel) == dqk_classes
    assert compiled(wy_hopper._wy_bwd_hopper_kernel) == wy_once
