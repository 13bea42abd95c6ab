"""Cases for the Triton kernels (linear recurrence, delta rule) and their comparison with the chunked PyTorch form.

Shared by the GPU tests and by the CPU interpreter run. The interpreter must be switched on before
Triton is imported, so on CPU this module runs in a subprocess (`python -m tests.kernels.cases GROUP`,
with TRITON_INTERPRET=1; GROUP is an op or "gla", the linear recurrence with a decay per key channel)
and prints one JSON line per case; the test module reads them.

Each comparison draws random inputs in float32, rounds them to the case dtype, and compares the
kernel (run on those rounded inputs) with the chunk form in float64 on the same rounded values:
the relative RMS error ||x - ref|| / ||ref|| of the output, the final state and the gradients of
q, k, v, (beta,) g and initial_state under a random linear loss on the output and the final state.
"""

from __future__ import annotations

import json
import math
import os
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
    gate: str = "scalar"  # "scalar" (B, T, H), "none" (g=None) or one per key channel (B, T, H, K): see GATES
    op: str = "linear_recurrence"  # or "delta_rule" (L2-normalised keys, beta in [0, 2])
    state: bool = True  # with an initial state
    lengths: tuple[int, ...] = ()  # packed sequences (cu_seqlens); then B = 1 and T = sum(lengths)
    loss: str = "both"  # "both", "output" or "state": what the random loss reads
    via_core: bool = False  # through core's registered "triton" implementation instead of the kernel API
    seed: int = 0
    gate_dtype: str = "float32"  # a float32 g's chunk-local cumsum is saved for the backward in its place; others recompute it

    @property
    def name(self) -> str:
        parts = ["delta"] if self.op == "delta_rule" else []
        parts += [f"T{sum(self.lengths) if self.lengths else self.T}", f"H{self.H}" if self.lengths else f"B{self.B}xH{self.H}", f"K{self.K}", f"V{self.V}", self.dtype, f"gate-{self.gate}"]
        parts += ["h0"] if self.state else []
        parts += [f"varlen{len(self.lengths)}"] if self.lengths else []
        parts += [f"loss-{self.loss}"] if self.loss != "both" else []
        parts += ["core"] if self.via_core else []
        parts += [f"g-{self.gate_dtype}"] if self.gate_dtype != "float32" else []
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
    q, k = randn(B, T, case.H, case.K), randn(B, T, case.H, case.K)
    inputs = dict(q=q.to(dtype), k=(F.normalize(k, dim=-1) if case.op == "delta_rule" else k).to(dtype), v=randn(B, T, case.H, case.V).to(dtype))
    if case.op == "delta_rule":
        inputs["beta"] = (2 * torch.sigmoid(randn(B, T, case.H))).to(dtype)
    x_scalar, x_vector = randn(B, T, case.H), randn(B, T, case.H, case.K)  # drawn for every gate: the other inputs stay the same
    gates = {
        "none": None,
        "scalar": F.logsigmoid(x_scalar + 3),
        "scalar_strong": -5 * torch.sigmoid(x_scalar + 2),  # one per head, down to -5 (Mamba-2 with a large dt)
        "vector": F.logsigmoid(x_vector + 3),
        "gla": F.logsigmoid(x_vector) / 16,  # GLA's gate with its normaliser 16
        "strong": -5 * torch.sigmoid(x_vector + 2),  # down to -5: gamma falls by ~280 over a chunk, ~70 over a sub-chunk
        # steep (~-11) and mild sub-chunks of 16 tokens in turn: the GLA kernels' diagonal blocks take both paths
        # (elementwise where gamma falls by more than their span limit, one dot elsewhere) in one launch
        "mixed": torch.where(
            (torch.arange(T) // 16 % 2 == 0)[:, None, None], -12 * torch.sigmoid(x_vector + 3), F.logsigmoid(x_vector + 3)
        ),
    }
    g = gates[case.gate]
    inputs.update(g=None if g is None else g.to(DTYPES[case.gate_dtype]), initial_state=randn(n_states, case.H, case.K, case.V) if case.state else None)
    if dtype == torch.float64:  # gates and states are float32 otherwise, float64 here
        inputs = {name: None if x is None else x.double() for name, x in inputs.items()}
    return {name: None if x is None else x.to(device) for name, x in inputs.items()}


def compare(case: Case, device: str) -> Result:
    """Run the kernel and the float64 chunk form on the same inputs; relative RMS errors of everything."""
    import time

    from core import ops

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

    ref_o, ref_state = getattr(ops, case.op)(
        **{name: ref_leaves.get(name) for name in names + ["g"]},
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
    delta = case.op == "delta_rule"
    tensors = [leaves["q"], leaves["k"], leaves["v"]] + ([leaves["beta"]] if delta else [])
    if case.via_core:
        from core import ops

        kwargs = dict(scale=scale, output_final_state=True, cu_seqlens=cu_seqlens)
        if leaves["q"].is_cuda:
            return getattr(ops, case.op)(**leaves, **kwargs, impl="triton")
        # on CPU the dispatcher offers no "triton"; call the registered function the way the op does
        from core.ops.delta_rule.triton import triton_delta_rule
        from core.ops.linear_recurrence.triton import triton_linear_recurrence

        g = leaves.get("g")
        g = torch.zeros(leaves["q"].shape[:3]) if g is None else g
        fn = triton_delta_rule if delta else triton_linear_recurrence
        return fn(*tensors, g, scale, leaves.get("initial_state"), True)
    from kernels.delta_rule import chunk_delta_rule
    from kernels.linear_recurrence import chunk_linear_recurrence

    fn = chunk_delta_rule if delta else chunk_linear_recurrence
    return fn(*tensors, leaves.get("g"), scale=scale, initial_state=leaves.get("initial_state"), output_final_state=True, cu_seqlens=cu_seqlens)


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
    Case(T=40, K=32, V=32, B=1, H=1, dtype="float16", via_core=True, seed=7),  # through core: 16-bit inputs go to the kernels
    Case(T=40, K=16, V=24, gate="vector", via_core=True, seed=8),  # float32: core runs the chunk form
    # gamma falls by ~280 over a chunk: the padded rows of the last chunk (gamma 0) must stay masked in every
    # exponent, or exp2(0 - gamma) overflows and 0 * inf puts NaN into dk, dv, dg (seen in Mamba-2 training)
    Case(T=49, K=32, V=64, B=1, H=2, gate="scalar_strong", seed=9),
]


# A decay per key channel (GLA): vector_decay.py and the per-channel flags of the shared kernels.
GLA = "gla"
GLA_INTERPRETER_CASES = [
    Case(T=1, K=16, V=16, B=1, H=1, gate="vector"),
    Case(T=63, K=32, V=32, B=1, gate="gla"),
    Case(T=65, K=16, V=16, B=1, H=1, gate="strong", state=False, seed=1),  # (Q e^gamma)(K e^-gamma)^T would overflow
    Case(T=70, K=24, V=40, B=1, gate="vector", seed=2),  # head dims not powers of two
    Case(T=70, K=72, V=16, B=1, H=1, gate="gla", seed=3),  # K above 64: two K tiles in the sub-chunk kernels
    Case(T=64, K=32, V=32, B=1, dtype="float16", gate="gla", seed=4),
    Case(T=65, K=16, V=16, B=1, H=1, dtype="float16", gate="strong", seed=5),
    Case(T=0, K=16, V=24, H=1, gate="vector", lengths=(5, 70, 0, 1, 30), seed=6),  # an empty sequence keeps its state
    Case(T=70, K=16, V=16, B=1, gate="vector", loss="state", seed=7),
    Case(T=70, K=72, V=24, B=1, H=1, gate="mixed", seed=10),
    Case(T=65, K=32, V=16, B=1, H=1, dtype="float16", gate="mixed", seed=11),
    Case(T=65, K=32, V=16, B=1, H=1, dtype="float16", gate="gla", gate_dtype="float16", seed=12),  # gc recomputed
    Case(T=65, K=16, V=16, B=1, gate="gla", loss="output", state=False, seed=8),
    Case(T=40, K=64, V=64, B=1, H=1, dtype="float16", gate="gla", via_core=True, seed=9),
]


# The delta rule's interpreter cases: the same awkward shapes, fewer of them (its kernels are slower to interpret).
DELTA = "delta_rule"
DELTA_INTERPRETER_CASES = [
    Case(T=1, K=16, V=16, B=1, H=1, op=DELTA),
    Case(T=63, K=24, V=40, op=DELTA),
    Case(T=65, K=40, V=24, gate="none", state=False, op=DELTA, seed=1),
    Case(T=70, K=136, V=24, B=1, H=1, dtype="float16", op=DELTA, seed=2),  # K above 128: 16-bit reverse-pass operands
    Case(T=64, K=32, V=32, dtype="float16", op=DELTA, seed=3),
    Case(T=0, K=24, V=40, lengths=(5, 70, 0, 1, 30), op=DELTA, seed=4),
    Case(T=0, K=40, V=24, lengths=(70, 0, 1, 30), gate="none", op=DELTA, seed=6),  # DeltaNet's output in the state pass
    Case(T=70, K=24, V=40, loss="state", op=DELTA, seed=5),
    Case(T=40, K=64, V=64, B=1, H=1, dtype="float16", via_core=True, op=DELTA, seed=7),
    Case(T=49, K=32, V=64, B=1, H=2, gate="scalar_strong", op=DELTA, seed=8),  # padded rows with strong gates
]
CASES = {"linear_recurrence": INTERPRETER_CASES, DELTA: DELTA_INTERPRETER_CASES, GLA: GLA_INTERPRETER_CASES}


def compiled_vs_eager(op: str, device: str, gate: str = "scalar") -> Result:
    """The op as a torch.library custom op: `torch.library.opcheck` (schema, fake implementation,
    autograd registration; raises on failure), then torch.compile(fullgraph=True, backend="aot_eager")
    of a loss over it, forward and backward, against the eager call: relative RMS differences of the
    loss and every gradient. fullgraph=True fails on any graph break."""
    from kernels.delta_rule import chunk_delta_rule
    from kernels.linear_recurrence import chunk_linear_recurrence

    case = Case(T=20, K=16, V=16, B=1, H=2, gate=gate, op=op, seed=40)
    inputs = make_inputs(case, device)
    names = [name for name, x in inputs.items() if x is not None]
    positional = ["q", "k", "v", "beta"] if op == DELTA else ["q", "k", "v"]
    fn = chunk_delta_rule if op == DELTA else chunk_linear_recurrence
    custom_op = getattr(torch.ops.seqmix, f"chunk_{op}").default
    leaves = [inputs[n].clone().requires_grad_() for n in positional + ["g", "initial_state"]]
    torch.library.opcheck(custom_op, [*leaves[:-1], 0.3, leaves[-1], True, None])
    # the forward also returning what the backward would recompute (T; the scores or g's cumsum), without and with the
    # chunks' states (SEQMIX_RECOMPUTE_STATES=1 and the default)
    torch.library.opcheck(custom_op, [*leaves[:-1], 0.3, leaves[-1], True, None, True, False])
    torch.library.opcheck(custom_op, [*leaves[:-1], 0.3, leaves[-1], True, None, True, True])
    rng = torch.Generator(device="cpu").manual_seed(1)
    w_o = torch.randn(inputs["v"].shape, generator=rng).to(device)

    def loss(xs: dict[str, torch.Tensor]) -> torch.Tensor:
        o, state = fn(*(xs[n] for n in positional), xs["g"], scale=0.3, initial_state=xs["initial_state"], output_final_state=True)
        return (o.float() * w_o).sum() + state.square().sum()

    results = []
    for run in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        leaves = {name: inputs[name].clone().requires_grad_() for name in names}
        value = run(leaves)
        results.append([value.detach(), *_grad(value, leaves)])
    result = Result(f"compile-{op}" + ("" if gate == "scalar" else f"-gate-{gate}"))
    for name, x, ref in zip(["loss"] + [f"d{n}" for n in names], *results):
        result.errors[name] = rel_rms(x, ref)
    # a second backward through the same graph (retain_graph) gives the same gradients: whatever the
    # forward saved for the backward (the delta rule's T) is read, never overwritten
    leaves = {name: inputs[name].clone().requires_grad_() for name in names}
    value = loss(leaves)
    first = _grad_retained(value, leaves)
    for name, x, ref in zip(names, _grad(value, leaves), first):
        result.errors[f"second-backward-d{name}"] = rel_rms(x, ref)
    # SEQMIX_RECOMPUTE_STATES=1: the backward recomputes the chunks' states instead of reading the forward's, same gradients
    os.environ["SEQMIX_RECOMPUTE_STATES"] = "1"
    try:
        leaves = {name: inputs[name].clone().requires_grad_() for name in names}
        recomputed = _grad(loss(leaves), leaves)
    finally:
        del os.environ["SEQMIX_RECOMPUTE_STATES"]
    for name, x, ref in zip(names, recomputed, first):
        result.errors[f"recomputed-states-d{name}"] = rel_rms(x, ref)
    # the backward gets no zero-filled gradients for the outputs it saved (T; the scores and g's cumsum): counted
    # among the errors, so it must be 0 (autograd fills them unless the op turns materialize_grads off)
    value = loss({name: inputs[name].clone().requires_grad_() for name in names})
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        value.backward()
    fills = [e for e in prof.events() if e.name == "aten::zero_" and e.input_shapes and math.prod(e.input_shapes[0]) > 0]
    result.errors["zero-filled-gradients"] = float(len(fills))
    return result


def _grad_retained(loss: torch.Tensor, leaves: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves.values())]


def compare_step(case: Case, device: str) -> Result:
    """`case.T` decode steps of the single-token kernel (state updated in place) against the float64
    naive op over the same T tokens from the same initial state: every output and the final state."""
    from kernels.common.step import recurrent_step

    from core import ops

    inputs = make_inputs(case, device)
    scale = 0.5 * case.K**-0.5
    state = inputs["initial_state"].float().clone()
    outputs = []
    for t in range(case.T):
        token = {n: None if x is None or n == "initial_state" else x[:, t : t + 1] for n, x in inputs.items()}
        outputs.append(recurrent_step(token["q"], token["k"], token["v"], token["g"], state, beta=token.get("beta"), scale=scale))
    ref = {n: None if x is None else x.double() for n, x in inputs.items()}
    ref_o, ref_state = getattr(ops, case.op)(**ref, scale=scale, output_final_state=True, impl="naive")
    result = Result(f"step-{case.name}")
    result.errors["o"] = rel_rms(torch.cat(outputs, dim=1), ref_o)
    result.errors["state"] = rel_rms(state, ref_state)
    return result


STEP_CASES = [  # T decode steps; head dims that are not powers of two
    Case(T=3, K=100, V=72, op="linear_recurrence", seed=50),
    Case(T=3, K=40, V=24, gate="none", op="linear_recurrence", seed=51),
    Case(T=3, K=100, V=72, op=DELTA, seed=52),
    Case(T=3, K=256, V=200, B=1, H=1, dtype="float16", gate="none", op=DELTA, seed=53),
]


def main() -> None:
    group = sys.argv[1] if len(sys.argv) > 1 else "linear_recurrence"
    for case in CASES[group]:
        result = compare(case, "cpu")
        print(json.dumps({**asdict(result), "spec": asdict(case)}), flush=True)
    if group == GLA:
        print(json.dumps(asdict(compiled_vs_eager("linear_recurrence", "cpu", gate="vector"))), flush=True)
        return
    op = group
    print(json.dumps(asdict(compiled_vs_eager(op, "cpu"))), flush=True)
    for case in STEP_CASES:
        if case.op == op:
            print(json.dumps(asdict(compare_step(case, "cpu"))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
