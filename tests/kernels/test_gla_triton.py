"""Triton linear recurrence with a decay per key channel (GLA, g of shape (B, T, H, K)) against the
chunked PyTorch form: outputs, final states, every gradient (q, k, v, g, initial_state).

On CPU the kernels run through Triton's interpreter in a subprocess (see tests/kernels/helpers.py),
at small sizes: T in {1, 63, 65, 70}, head dims 16, 32 and not powers of two, K above one sub-chunk
kernel tile, packed sequences with an empty one, float32 and float16, GLA gates (logsigmoid / 16)
strong ones (down to -5, where the plain factorisation would overflow) and steep and mild
sub-chunks in turn (both paths of the diagonal blocks). On CUDA (`-m gpu`) they
run compiled at the issue's sizes: bf16, T in {1, 63, 64, 65, 1000, 4096}, head dims {64, 100, 128},
every autotune config, no recompilation per length and 64-bit offsets.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import GLA, GLA_INTERPRETER_CASES, Case
from tests.kernels.helpers import check_64bit_offsets, check_every_config, check_no_recompilation, gpu_matches_chunk_form, interpreter_tests, needs_cuda

# --- CPU: the interpreter, in a subprocess (opcheck and torch.compile with g of shape (B, T, H, K) too) -------

interpreter_results, test_interpreter_matches_chunk_form, test_interpreter_custom_op_compiles = interpreter_tests(
    GLA, GLA_INTERPRETER_CASES, "compile-linear_recurrence-gate-vector"
)


def test_kernel_api_checks_g_shape() -> None:
    """A g that is neither (B, T, H) nor (B, T, H, K) is refused with a message naming both shapes."""
    pytest.importorskip("triton")
    from kernels.linear_recurrence import chunk_linear_recurrence, supports

    q = torch.zeros(1, 4, 2, 64)
    v = torch.zeros(1, 4, 2, 80)
    assert supports(q, v, torch.zeros(1, 4, 2, 64)) and supports(q, v, torch.zeros(1, 4, 2))
    assert supports(q[..., :16], v[..., :16], None) and not supports(torch.zeros(1, 4, 2, 257), v, None)
    with pytest.raises(ValueError, match=r"\(B, T, H, K\)"):
        chunk_linear_recurrence(q, q, v, torch.zeros(1, 4, 2, 80))


# --- GPU: compiled kernels at full sizes -------------------------------------------------------------

BF16 = "bfloat16"
# GLA gates (logsigmoid / 16) at odd lengths, faster ones (logsigmoid(x + 3)) at the others
SWEEP = [
    Case(T=T, K=D, V=D, B=2, H=4, dtype=BF16, gate="gla" if T % 2 else "vector", seed=T + D)
    for T in (1, 63, 64, 65, 1000, 4096)
    for D in (64, 100, 128)
]
LENGTHS = (1, 63, 1, 935, 0, 1345, 64, 1687)  # an empty sequence, single tokens, exact chunks
GPU_CASES = [
    Case(T=1000, K=64, V=64, B=2, H=4, dtype=BF16, gate="strong", seed=1),  # gamma falls by ~280 in a chunk
    Case(T=1000, K=128, V=128, B=2, H=4, dtype="float16", gate="strong", seed=2),
    Case(T=1000, K=128, V=128, B=2, H=4, dtype="float16", gate="gla", seed=3),
    Case(T=300, K=64, V=64, B=2, H=4, dtype="float32", gate="vector", seed=4),  # exact fp32 dots (K <= 64: compiles quickly)
    Case(T=1000, K=256, V=256, B=1, H=2, dtype=BF16, gate="gla", seed=5),  # the largest head dim: several K and V tiles
    Case(T=300, K=64, V=200, B=2, H=4, dtype=BF16, gate="gla", seed=6),
    Case(T=300, K=200, V=48, B=2, H=4, dtype=BF16, gate="vector", seed=7),
    Case(lengths=LENGTHS, K=128, V=128, H=4, dtype=BF16, gate="gla", seed=8),
    Case(T=300, K=64, V=64, B=2, H=4, dtype=BF16, gate="gla", loss="state", seed=9),
    Case(T=300, K=64, V=64, B=2, H=4, dtype=BF16, gate="gla", loss="output", state=False, seed=10),
    Case(T=1000, K=128, V=128, B=2, H=4, dtype=BF16, gate="gla", via_core=True, seed=11),
    Case(lengths=LENGTHS, K=64, V=64, H=4, dtype=BF16, gate="vector", via_core=True, seed=12),
    Case(T=197, K=32, V=32, B=8, H=4, dtype=BF16, gate="gla", seed=13),  # small head dims
    Case(T=300, K=16, V=48, B=4, H=4, dtype=BF16, gate="strong", seed=14),
    Case(T=1000, K=128, V=128, B=2, H=4, dtype=BF16, gate="mixed", seed=15),  # both diagonal-block paths in one launch
    Case(lengths=LENGTHS, K=100, V=64, H=4, dtype="float16", gate="mixed", seed=16),
]


test_gpu_matches_chunk_form = gpu_matches_chunk_form(SWEEP + GPU_CASES)


@pytest.mark.gpu
@needs_cuda
def test_gpu_no_recompilation_when_only_T_changes() -> None:
    from kernels.linear_recurrence.passes import AUTOTUNED

    check_no_recompilation(AUTOTUNED, lambda T: Case(T=T, K=64, V=64, B=2, H=2, dtype=BF16, gate="gla"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("index", range(4))
def test_gpu_every_autotune_config(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (num_warps, num_stages) choice of every kernel the per-channel decay runs (the shared ones with
    G_PER_K and vector_decay.py's) gives correct results: Triton miscompiles some on Hopper. 16-bit inputs:
    the tensor-core (wgmma) paths where the miscompilations live."""
    from kernels.linear_recurrence.passes import AUTOTUNED

    cases = (
        Case(T=1000, K=128, V=128, B=2, H=4, dtype=BF16, gate="gla", seed=20),
        Case(lengths=LENGTHS, K=100, V=100, H=4, dtype=BF16, gate="vector", seed=21),
        Case(T=300, K=64, V=64, B=2, H=4, dtype="float16", gate="strong", seed=22),
        Case(T=300, K=128, V=128, B=2, H=4, dtype=BF16, gate="mixed", seed=23),
    )
    check_every_config(AUTOTUNED, index, cases, monkeypatch)


@pytest.mark.gpu
@needs_cuda
def test_gpu_64bit_offsets() -> None:
    """T = 131072, H = 132, K = 128 (q, k, g and the cumulative gates pass 2**31 elements), V = 32."""
    check_64bit_offsets("gla", V=32, min_free_gib=72)
