"""Fused layer kernels (kernels.layers: causal convolution with SiLU, gated RMSNorm) against core's "torch" forms:
outputs and every gradient, with and without state, bias and gate, slices read in place, 16-bit and float32.

On CPU the kernels run through Triton's interpreter in one subprocess (see tests/kernels/helpers.py); on CUDA
(`-m gpu`) compiled, at the sizes of the speech app's dual-path layers and in bfloat16.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import check, interpreter_result, needs_cuda, needs_triton, run_interpreter
from tests.kernels.layer_cases import CONV_CASES, NORM_CASES, ConvCase, NormCase, compare

in_one_subprocess = pytest.mark.xdist_group("triton_interpreter_layers")
CPU_CASES = CONV_CASES + NORM_CASES


def check_layer(case: ConvCase | NormCase, errors: dict[str, float]) -> None:
    """The recurrences' tolerances (tests/kernels/helpers.py), the output read as theirs."""
    check(case, {("o" if name == "y" else name): err for name, err in errors.items()})


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, dict[str, float]]:
    return run_interpreter("layers", module="tests.kernels.layer_cases")


@needs_triton
@in_one_subprocess
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_interpreter_matches_torch_form(case: ConvCase | NormCase, interpreter_results: dict[str, dict[str, float]]) -> None:
    check_layer(case, interpreter_result(interpreter_results, case.name))


@needs_triton
@in_one_subprocess
def test_interpreter_custom_ops_compile(interpreter_results: dict[str, dict[str, float]]) -> None:
    errors = interpreter_result(interpreter_results, "compile-layers")
    assert errors and max(errors.values()) <= 1e-6, f"compiled and eager differ: {errors}"


BF16 = "bfloat16"
GPU_CASES = [
    ConvCase(B=656, T=100, C=512, dtype=BF16, state=False, bias=False, strided=True, seed=10),  # speech, Gated DeltaNet
    ConvCase(B=1600, T=41, C=384, dtype=BF16, strided=True, seed=11),  # speech, Mamba-2's inter-chunk path
    ConvCase(B=2, T=4097, C=1000, dtype=BF16, seed=12),
    ConvCase(B=4, T=3, C=256, dtype=BF16, seed=13),  # T shorter than the state
    ConvCase(B=2, T=1000, C=64, K=3, dilation=8, activation=None, dtype="float32", seed=14),
    ConvCase(B=2, T=300, C=96, K=1, dtype="float16", seed=15),
    NormCase(shape=(656, 100, 256), group_size=128, dtype=BF16, strided=True, seed=20),  # speech, Gated DeltaNet
    NormCase(shape=(1600, 41, 256), norm_before_gate=False, dtype=BF16, seed=21),  # speech, Mamba-2
    NormCase(shape=(4, 1000, 4096), group_size=2048, norm_before_gate=False, dtype=BF16, seed=22),  # wide groups
    NormCase(shape=(2, 333, 96), group_size=24, dtype="float32", seed=23),
    NormCase(shape=(2, 333, 200), gate=False, dtype="float16", seed=24),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_gpu_matches_torch_form(case: ConvCase | NormCase) -> None:
    check_layer(case, compare(case, "cuda").errors)


@pytest.mark.gpu
@needs_cuda
def test_gpu_dispatch_uses_the_kernels() -> None:
    """impl=None on CUDA picks the kernels: a ShortConv and a GatedRMSNorm step runs them, and no aten::mul."""
    from core.layers import GatedRMSNorm, ShortConv

    conv, norm = ShortConv(64).cuda(), GatedRMSNorm(64, group_size=32).cuda()
    x = torch.randn(2, 50, 64, device="cuda", requires_grad=True)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        y, _ = conv(x)
        norm(y, x).sum().backward()
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    kernels = {"_conv_fwd_kernel", "_conv_dpre_kernel", "_conv_dx_kernel", "_norm_fwd_kernel", "_norm_bwd_kernel"}
    assert kernels <= names, f"kernels that did not run: {kernels - names}"
    assert "aten::mul" not in names, "an elementwise product ran outside the kernels"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["gated_deltanet", "mamba2", "deltaproduct"])
def test_gpu_mixer_matches_cpu(name: str) -> None:
    """A whole layer on CUDA in float32 (short convolution, L2 and output norms through the kernels) against the same
    layer on CPU (PyTorch forms): output and every parameter's gradient."""
    import copy

    import core
    from tests.kernels.cases import rel_rms

    torch.manual_seed(0)
    layer = core.build_mixer(name, d_model=96)
    x = torch.randn(3, 70, 96)
    grads = []
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(layer).to(device)
        y, _ = model(x.to(device))
        y.square().sum().backward()
        grads.append([y.cpu(), *(p.grad.cpu() for p in model.parameters())])
    errors = [rel_rms(a, b) for a, b in zip(grads[1], grads[0])]
    assert max(errors) < 1e-4, errors
