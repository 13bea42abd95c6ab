"""What the kernel test modules share: tolerances, the check, the interpreter tests (one subprocess per
module), and the GPU checks that every op's kernels pass alike (no recompilation per length, every
autotune config, 64-bit offsets)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch

from tests.kernels.cases import Case, compare, rel_rms

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA device and Triton")

ROOT = Path(__file__).resolve().parents[2]
# relative RMS error allowed for (outputs and states, gradients)
TOLERANCE = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4), "float16": (5e-3, 1e-2), "bfloat16": (5e-3, 1e-2)}


def check(case: Case, errors: dict[str, float]) -> None:
    tol_out, tol_grad = TOLERANCE[case.dtype]
    bad = {name: err for name, err in errors.items() if not err <= (tol_out if name in ("o", "state") else tol_grad)}
    assert not bad, f"{case.name}: relative RMS errors above ({tol_out}, {tol_grad}): {bad}; all: {errors}"


def run_interpreter(group: str, module: str = "tests.kernels.cases") -> dict[str, dict[str, float]]:
    """Errors of every interpreter case of `group` (an op, or "gla"), by case name, from
    `python -m MODULE GROUP` in a subprocess (TRITON_INTERPRET=1 must be set before Triton
    is imported, and must not leak)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", module, group], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"interpreter run failed:\n{run.stdout}\n{run.stderr[-5000:]}"
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r["errors"] for r in results}


def interpreter_result(results: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    assert name in results, f"no result for {name}; got {sorted(results)}"
    return results[name]


def interpreter_tests(group: str, cases: Sequence[Case], compile_name: str, step_cases: Sequence[Case] = ()) -> tuple[Callable, ...]:
    """A kernel test module's CPU tests, for it to bind to module-level names: the fixture
    `interpreter_results` (every case of `group` run once, in one interpreter subprocess), the comparison
    of each case with the chunk form, the custom-op check (opcheck and torch.compile(fullgraph=True) equal
    to eager, result `compile_name`) and, with `step_cases`, the decode steps against the naive op."""
    in_one_subprocess = pytest.mark.xdist_group(f"triton_interpreter_{group}")  # one per module, not per worker

    @pytest.fixture(scope="module")
    def interpreter_results() -> dict[str, dict[str, float]]:
        return run_interpreter(group)

    @needs_triton
    @in_one_subprocess
    @pytest.mark.parametrize("case", cases, ids=lambda c: c.name)
    def test_interpreter_matches_chunk_form(case: Case, interpreter_results: dict[str, dict[str, float]]) -> None:
        check(case, interpreter_result(interpreter_results, case.name))

    @needs_triton
    @in_one_subprocess
    def test_interpreter_custom_op_compiles(interpreter_results: dict[str, dict[str, float]]) -> None:
        errors = interpreter_result(interpreter_results, compile_name)
        assert errors and max(errors.values()) <= 1e-6, f"compiled and eager differ: {errors}"

    @needs_triton
    @in_one_subprocess
    @pytest.mark.parametrize("case", step_cases, ids=lambda c: c.name)
    def test_interpreter_step_matches_naive(case: Case, interpreter_results: dict[str, dict[str, float]]) -> None:
        """Decode steps of kernels.common.step.recurrent_step against the naive op over the same tokens."""
        check(case, interpreter_result(interpreter_results, f"step-{case.name}"))

    tests = (interpreter_results, test_interpreter_matches_chunk_form, test_interpreter_custom_op_compiles)
    return (*tests, test_interpreter_step_matches_naive) if step_cases else tests


def gpu_matches_chunk_form(cases: Sequence[Case]) -> Callable:
    """A kernel test module's GPU comparison test, for it to bind to a module-level name: each case run compiled
    on CUDA against the float64 chunk form (`-m gpu`; skipped without a CUDA device)."""

    @pytest.mark.gpu
    @needs_cuda
    @pytest.mark.parametrize("case", cases, ids=lambda c: c.name)
    def test_gpu_matches_chunk_form(case: Case) -> None:
        check(case, compare(case, "cuda").errors)

    return test_gpu_matches_chunk_form


def check_no_recompilation(autotuned: Mapping, case_at: Callable[[int], Case]) -> None:
    """After a first run, the cases `case_at(T)` at other lengths are correct and compile nothing new:
    T stays a run-time argument of every kernel in `autotuned`."""

    def compiled() -> int:
        return sum(len(cache[0]) for kernel in autotuned for cache in kernel.fn.device_caches.values())

    compare(case_at(100), "cuda")
    before = compiled()
    for T in (1, 63, 64, 1000, 4097):
        check(case_at(T), compare(case_at(T), "cuda").errors)
    assert compiled() == before, "a new sequence length compiled new kernels: T must stay a run-time argument"


def check_every_config(autotuned: Mapping, index: int, cases: Sequence[Case], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cases are correct with every kernel of `autotuned` held to its index-th (num_warps, num_stages)
    choice (cycling through shorter lists): Triton miscompiles some on Hopper. The Triton kernels run wherever a
    Gluon kernel would stand in for them on Hopper (SEQMIX_GLUON=0)."""
    monkeypatch.setenv("SEQMIX_GLUON", "0")
    for kernel, choices in autotuned.items():
        monkeypatch.setattr(kernel, "configs", [choices[index % len(choices)]])
        monkeypatch.setattr(kernel, "cache", {})
    for case in cases:
        check(case, compare(case, "cuda").errors)


def check_64bit_offsets(gate: str, V: int, min_free_gib: int) -> None:
    """An op at T = 131072 with H * K large enough that offsets pass 2**31 elements, on the GPU: the linear
    recurrence with gate "scalar" (B, T, H) or "gla" (B, T, H, K), or the gated delta rule with gate "delta" (g
    and beta (B, T, H)). V may be small: q, k and g carry the offsets.

    Keys are zero before the last `tail` tokens, so the state there is zero and the tail must equal
    a separate run of the chunk form on the tail alone; the tail sits at the largest offsets.
    """
    from core.ops import delta_rule, linear_recurrence
    from kernels.delta_rule import chunk_delta_rule
    from kernels.linear_recurrence import chunk_linear_recurrence

    T, H, D, tail = 131072, 132, 128, 2048
    assert T * H * D > 2**31
    delta = gate == "delta"
    torch.cuda.empty_cache()  # what an earlier test left in the caching allocator counts as free
    free, _ = torch.cuda.mem_get_info()
    if free < min_free_gib * 2**30:
        pytest.skip(f"needs about {min_free_gib} GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    torch.manual_seed(0)
    q, k = (torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(1, T, H, V, device="cuda", dtype=torch.bfloat16)
    k[:, :-tail] = 0
    x = torch.randn(1, T, H, *((D,) if gate == "gla" else ()), device="cuda")
    g = torch.nn.functional.logsigmoid(x) / 16 if gate == "gla" else torch.nn.functional.logsigmoid(x + 3)
    del x
    inputs = [q, k, v, g]
    if delta:  # unit keys (as the layers make them) and step sizes in (0, 1): a stable recurrence
        k[:, -tail:] = torch.nn.functional.normalize(k[:, -tail:].float(), dim=-1).to(k.dtype)
        inputs = [q, k, v, torch.rand(1, T, H, device="cuda"), g]
    leaves = [t.requires_grad_() for t in inputs]
    ours = chunk_delta_rule if delta else chunk_linear_recurrence
    o, state = ours(*leaves, output_final_state=True)
    w_o = torch.randn(1, tail, H, V, device="cuda")
    w_s = torch.randn_like(state)
    grads = torch.autograd.grad((o[:, -tail:].float() * w_o).sum() + (state * w_s).sum(), leaves)
    assert o[:, :-tail].abs().max().item() == 0
    tail_o, tail_grads = o[:, -tail:], [t[:, -tail:] for t in grads]
    tail_inputs = [t[:, -tail:].detach().clone() for t in inputs]
    del o, grads, leaves, inputs, q, k, v, g
    torch.cuda.empty_cache()

    reference = delta_rule if delta else linear_recurrence
    ref = [t.double().requires_grad_() for t in tail_inputs]
    ref_o, ref_state = reference(*ref, output_final_state=True, impl="chunk")
    ref_grads = torch.autograd.grad((ref_o * w_o.double()).sum() + (ref_state * w_s.double()).sum(), ref)
    names = "qkvbg" if delta else "qkvg"
    errors = {"o": rel_rms(tail_o, ref_o), "state": rel_rms(state, ref_state)}
    errors.update({f"d{n}": rel_rms(a, b) for n, a, b in zip(names, tail_grads, ref_grads)})
    check(Case(T=T, K=D, V=V, B=1, H=H, dtype="bfloat16", gate="scalar" if delta else gate, op="delta_rule" if delta else "linear_recurrence"), errors)
