"""Triton linear recurrence against the chunked PyTorch form: outputs, final states, every gradient.

On CPU the kernels run through Triton's interpreter in a subprocess (TRITON_INTERPRET=1 must be set
before Triton is imported, and must not leak into other tests of this worker). On CUDA (`-m gpu`)
they run compiled, at full sizes, including awkward lengths, head dims that are not powers of two,
packed sequences, every autotune config and 64-bit offsets.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import INTERPRETER_CASES, STEP_CASES, Case
from tests.kernels.helpers import check_64bit_offsets, check_every_config, check_no_recompilation, gpu_matches_chunk_form, interpreter_tests, needs_cuda

# --- CPU: the interpreter, in a subprocess -----------------------------------------------------------

interpreter_results, test_interpreter_matches_chunk_form, test_interpreter_custom_op_compiles, test_interpreter_step_matches_naive = (
    interpreter_tests("linear_recurrence", INTERPRETER_CASES, "compile-linear_recurrence", [c for c in STEP_CASES if c.op == "linear_recurrence"])
)


# --- GPU: compiled kernels at full sizes -------------------------------------------------------------

BF16 = "bfloat16"
SWEEP = [Case(T=T, K=D, V=D, B=2, H=4, dtype=BF16, seed=T + D) for T in (1, 63, 64, 65, 1000, 4096) for D in (64, 100, 128)]
LENGTHS = (1, 63, 1, 935, 0, 1345, 64, 1687)  # an empty sequence, single tokens, exact chunks
# No float32 case at a padded head dim (K=100): its exact-fp32 backward takes over 15 minutes to compile
# with Triton 3.6 on an H100, and core sends float32 inputs to the chunk form anyway.
GPU_CASES = [
    Case(T=65, K=128, V=128, B=2, H=4, dtype=BF16, gate="none", state=False),
    Case(T=100, K=128, V=64, B=4, H=4, dtype=BF16, gate="scalar_strong", seed=16),  # the speech app's Mamba-2 shape
    Case(T=4096, K=128, V=128, B=2, H=4, dtype=BF16, gate="none", state=False, seed=1),
    Case(T=1000, K=64, V=64, B=2, H=4, dtype="float32", seed=2),
    Case(T=1000, K=128, V=128, B=2, H=4, dtype="float16", seed=4),
    Case(T=1000, K=256, V=256, B=1, H=2, dtype=BF16, seed=5),  # the largest head dim: several K and V tiles
    Case(T=300, K=64, V=200, B=2, H=4, dtype=BF16, seed=6),
    Case(lengths=LENGTHS, K=128, V=128, H=4, dtype=BF16, seed=7),
    Case(T=300, K=64, V=64, B=2, H=4, dtype=BF16, loss="state", seed=9),
    Case(T=300, K=64, V=64, B=2, H=4, dtype=BF16, loss="output", state=False, seed=10),
    Case(T=1000, K=128, V=128, B=2, H=4, dtype=BF16, via_core=True, seed=11),
    Case(lengths=LENGTHS, K=64, V=64, H=4, dtype=BF16, via_core=True, seed=12),
    Case(T=200, K=64, V=64, B=2, H=4, dtype=BF16, gate="vector", via_core=True, seed=13),  # the GLA kernels (tests/kernels/test_gla_triton.py)
    Case(T=200, K=64, V=64, B=2, H=4, dtype="float64", via_core=True, seed=14),  # falls back to chunk
    Case(T=200, K=100, V=100, B=2, H=4, dtype="float32", via_core=True, seed=15),  # falls back to chunk
    Case(T=197, K=32, V=32, B=8, H=4, dtype=BF16, gate="scalar_strong", seed=17),  # small head dims: Vision Mamba's shape
    Case(T=300, K=16, V=48, B=4, H=4, dtype=BF16, seed=18),
]


test_gpu_matches_chunk_form = gpu_matches_chunk_form(SWEEP + GPU_CASES)


@pytest.mark.gpu
@needs_cuda
def test_gpu_dispatch_prefers_triton_on_cuda() -> None:
    from core.ops import dispatch

    assert dispatch.implementations("linear_recurrence", torch.device("cuda"))[0] == "triton"
    assert dispatch.implementations("linear_recurrence", torch.device("cpu"))[0] == "chunk"


@pytest.mark.gpu
@needs_cuda
def test_gpu_no_recompilation_when_only_T_changes() -> None:
    from kernels.linear_recurrence.passes import AUTOTUNED

    check_no_recompilation(AUTOTUNED, lambda T: Case(T=T, K=64, V=64, B=2, H=2, dtype=BF16))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(4))
def test_gpu_every_autotune_config(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (num_warps, num_stages) choice the autotuner may pick gives correct results (Hopper miscompiles some).

    16-bit inputs only: they take the tensor-core (wgmma) paths where the miscompilations live; float32
    runs exact fp32 dots, whose backward kernel compiles for minutes per config at head dims above 64.
    """
    from kernels.linear_recurrence.passes import AUTOTUNED

    check_every_config(AUTOTUNED, index, (Case(T=1000, K=128, V=128, B=2, H=4, dtype=BF16, seed=20), Case(lengths=LENGTHS, K=100, V=100, H=4, dtype=BF16, seed=21)), monkeypatch)


@pytest.mark.gpu
@needs_cuda
def test_gpu_64bit_offsets() -> None:
    """T = 131072 with H * K large enough that offsets pass 2**31 elements (see helpers.check_64bit_offsets)."""
    check_64bit_offsets("scalar", V=128, min_free_gib=60)
