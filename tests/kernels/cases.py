"""Cases for the Triton linear recurrence and their comparison with the chunked PyTorch form.

Shared by the GPU tests and by the CPU interpreter run. The interpreter must be switched on before
Triton is imported, so on CPU this module runs in a subprocess (`python -m tests.kernels.cases`,
with TRITON_INTERPRET=1) and prints one JSON line per case; the test module reads them.

Each comparison draws random inputs in float32, rounds them to the case dtype, and compares the
kernel (run on those rounded inputs) with the chunk form in float64 on the same rounded values:
the relative RMS error ||x - ref|| / ||ref|| of the output, the final state and the gradients of
q, k, v, g and initial_state under a random linear loss on the output and the final state.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Case:
    T: int = 64
    K: int = 32
    V: int = 32
    B: int = 2
    H: int = 2
    dtype: str = "float32"
    gate: str = "scalar"  # "scalar" (B, T, H), "none" (g=None) or "vector" (B, T, H, K): the core wrapper falls back
    state: bool = True  # with an initial state
    lengths: tuple[int, ...] = ()  # packed sequences (cu_seqlens); then B = 1 and T = sum(lengths)
    loss: str = "both"  # "both", "output" or "state": what the random loss reads
    via_core: bool = False  # through core's registered "triton" implementation instead of the kernel API
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [f"T{sum(self.lengths) if self.lengths else self.T}", f"K{self.K}", f"V{self.V}", self.dtype, f"gate-{self.gate}"]
        parts += ["h0"] if self.state else []
        parts += [f"varlen{len(self.lengths)}"] if self.lengths else []
        parts += [f"loss-{self.loss}"] if self.loss != "both" else []
        parts += ["core"] if self.via_core else []
        return "-".join(parts)


@dataclass
class Result:
    case: str
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    norm = ref.norm().item()
    return ((x - ref).norm() / (norm if norm > 0 else 1.0)).item()  # absolute where the reference is 0


def make_inputs(case: Case, device: str) -> dict[str, torch.Tensor | None]:
    rng = torch.Generator(device="cpu").manual_seed(case.seed)
    B, T = (1, sum(case.lengths)) if case.lengths else (case.B, case.T)
    n_states = len(case.lengths) if case.lengths else B

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng)

    dtype = DTYPES[case.dtype]
    inputs = dict(
        q=randn(B, T, case.H, case.K).to(dtype),
        k=randn(B, T, case.H, case.K).to(dtype),
        v=randn(B, T, case.H, case.V).to(dtype),
        g={"none": None, "scalar": F.logsigmoid(randn(B, T, case.H) + 3), "vector": F.logsigmoid(randn(B, T, case.H, case.K) + 3)}[
            case.gate
        ],
        initial_state=randn(n_states, case.H, case.K, case.V) if case.state else None,
    )
    if dtype == torch.float64:  # gates and states are float32 otherwise, float64 here
        inputs = {name: None if x is None else x.double() for name, x in inputs.items()}
    return {name: None if x is None else x.to(device) for name, x in inputs.items()}


def compare(case: Case, device: str) -> Result:
    """Run the kernel and the float64 chunk form on the same inputs; relative RMS errors of everything."""
    import time

    from core.ops import linear_recurrence

    inputs = make_inputs(case, device)
    cu_seqlens = None
    if case.lengths:
        cu_seqlens = torch.tensor([0, *case.lengths], device=device).cumsum(0).to(torch.int32)
    scale = 0.5 * case.K**-0.5
    names = [name for name, x in inputs.items() if x is not None]
    leaves = {name: inputs[name].clone().requires_grad_() for name in names}
    ref_leaves = {name: inputs[name].double().requires_grad_() for name in names}

    start = time.perf_counter()
    o, state = _run_triton(case, leaves, scale, cu_seqlens)
    rng = torch.Generator(device="cpu").manual_seed(case.seed + 1)
    w_o = torch.randn(o.shape, generator=rng).to(device)
    w_s = torch.randn(state.shape, generator=rng).to(device)
    grads = _grad(_loss(case, o if o.dtype == torch.float64 else o.float(), state, w_o, w_s), leaves)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    ref_o, ref_state = linear_recurrence(
        **{name: ref_leaves.get(name) for name in ("q", "k", "v", "g", "initial_state")},
        scale=scale, output_final_state=True, cu_seqlens=cu_seqlens, impl="chunk",
    )
    ref_grads = _grad(_loss(case, ref_o, ref_state, w_o.double(), w_s.double()), ref_leaves)
    result = Result(case.name, seconds=seconds)
    result.errors["o"] = rel_rms(o, ref_o)
    result.errors["state"] = rel_rms(state, ref_state)
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        assert grad.shape == leaves[name].shape and grad.dtype == leaves[name].dtype, name
        result.errors[f"d{name}"] = rel_rms(grad, ref_grad)
    return result


def _grad(loss: torch.Tensor, leaves: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves.values())]


def _loss(case: Case, o: torch.Tensor, state: torch.Tensor, w_o: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    terms = {"output": [(o * w_o).sum()], "state": [(state * w_s).sum()]}
    return sum(terms["output"] + terms["state"] if case.loss == "both" else terms[case.loss])


def _run_triton(case: Case, leaves: dict, scale: float, cu_seqlens: torch.Tensor | None):
    if case.via_core:
        from core.ops import linear_recurrence

        kwargs = dict(scale=scale, output_final_state=True, cu_seqlens=cu_seqlens)
        if leaves["q"].is_cuda:
            return linear_recurrence(**leaves, **kwargs, impl="triton")
        # on CPU the dispatcher offers no "triton"; call the registered function the way the op does
        from core.ops.linear_recurrence.triton import triton_linear_recurrence

        g = leaves.get("g")
        g = torch.zeros(leaves["q"].shape[:3]) if g is None else g
        return triton_linear_recurrence(leaves["q"], leaves["k"], leaves["v"], g, scale, leaves.get("initial_state"), True)
    from kernels.linear_recurrence import chunk_linear_recurrence

    return chunk_linear_recurrence(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("g"),
        scale=scale, initial_state=leaves.get("initial_state"), output_final_state=True, cu_seqlens=cu_seqlens,
    )


# Small enough for the interpreter (about a minute in all on one core). The interpreter computes
# bfloat16 dots wrongly (it holds bfloat16 as uint16), so CPU cases use float32 and float16; bfloat16
# is covered on the GPU.
INTERPRETER_CASES = [
    Case(T=1, K=16, V=16, B=1, H=1),
    Case(T=63, K=24, V=40),
    Case(T=65, K=40, V=24, gate="none", state=False, seed=1),
    Case(T=70, K=200, V=72, B=1, H=1, seed=2),  # K above 128: several K tiles in every kernel
    Case(T=64, K=32, V=32, dtype="float16", seed=3),
    Case(T=0, K=24, V=40, lengths=(5, 70, 0, 1, 30), seed=4),  # an empty sequence keeps its state
    Case(T=70, K=24, V=40, loss="state", seed=5),
    Case(T=70, K=24, V=40, loss="output", state=False, seed=6),
    Case(T=40, K=16, V=24, dtype="float16", via_core=True, seed=7),  # float32 would go to the chunk form
    Case(T=40, K=16, V=24, gate="vector", via_core=True, seed=8),  # not a kernel input: falls back to the chunk form
]


def main() -> None:
    for case in INTERPRETER_CASES:
        result = compare(case, "cpu")
        print(json.dumps({**asdict(result), "spec": asdict(case)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
