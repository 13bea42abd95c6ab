"""neural_memory: the chunked form against the token loop (outputs, anchor reads, states, gradients),
the fully online rule at chunk size 1, state passing at any split, padding, and errors."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from core.ops import delta_rule
from core.ops.neural_memory import MemorySpec, NeuralMemoryState, neural_memory
from core.ops.neural_memory.memory import newton_schulz

F64 = torch.float64
K = 4
PER_TOKEN = ("q", "k", "v", "theta", "log_r", "log_eta", "window_gate", "huber_delta", "anchor_q")

SPECS = {
    "titans_matrix": MemorySpec(K, K, kind="matrix"),
    "titans_mlp": MemorySpec(K, K, hidden=6),
    "vector_gd": MemorySpec(K, K, kind="vector", optimizer="gd"),
    "moneta": MemorySpec(K, K, hidden=6, residual_norm=True, objective="lp", p=3, retention="lq", q=4, optimizer="gd"),
    "yaad": MemorySpec(K, K, hidden=6, residual_norm=True, objective="huber", optimizer="gd"),
    "memora": MemorySpec(K, K, hidden=6, retention="kl", optimizer="gd"),
    "atlas": MemorySpec(K, 3, hidden=6, depth=3, optimizer="muon", window=3),
    "omeganet": MemorySpec(K, K, kind="matrix", optimizer="gd", window=4),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(spec: MemorySpec, B: int = 2, T: int = 23, H: int = 2, seed: int = 0) -> dict:
    """Random float64 inputs for `spec`: L2-normalised q, k, gates in range, W_init (on the simplex for "kl")."""
    rng = gen(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    inputs = dict(
        q=F.normalize(randn(B, T, H, K), dim=-1), k=F.normalize(randn(B, T, H, K), dim=-1), v=randn(B, T, H, spec.value_dim),
        theta=0.3 * torch.rand(B, T, H, generator=rng, dtype=F64), log_r=F.logsigmoid(randn(B, T, H) + 3),
        log_eta=F.logsigmoid(randn(B, T, H) + 1) if spec.optimizer != "gd" else None,
        window_gate=torch.rand(B, T, H, generator=rng, dtype=F64) if spec.window > 1 else None,
        huber_delta=0.5 + torch.rand(B, T, H, generator=rng, dtype=F64) if spec.objective == "huber" else None,
        anchor_q=F.normalize(randn(B, T, H, K), dim=-1) if spec.retention != "kl" else None,
        norm_weight=1 + 0.1 * randn(H, spec.value_dim) if spec.residual_norm else None,
    )
    weights = [0.3 * randn(H, *shape) for shape in spec.shapes]
    inputs["initial_weights"] = [torch.softmax(w, -1) for w in weights] if spec.retention == "kl" else weights
    return inputs


def run(spec: MemorySpec, inputs: dict, impl: str | None = None, **options) -> tuple:
    return neural_memory(**inputs, spec=spec, impl=impl, **options)


def slice_time(inputs: dict, start: int, stop: int) -> dict:
    return {n: x[:, start:stop] if n in PER_TOKEN and x is not None else x for n, x in inputs.items()}


def state_tensors(state: NeuralMemoryState) -> list[torch.Tensor]:
    """Every tensor of a state, flattened in a fixed order."""
    tensors = []
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        tensors += value if isinstance(value, list) else [] if value is None else [value]
    return tensors


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10, msg: str = "") -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}")


def assert_same_results(results_a: tuple, results_b: tuple, tol: float = 1e-10) -> None:
    (o_a, h_a, s_a), (o_b, h_b, s_b) = results_a, results_b
    assert_close(o_a, o_b, tol, "outputs:")
    if h_a is not None:
        assert_close(h_a, h_b, tol, "anchor reads:")
    for x, y in zip(state_tensors(s_a), state_tensors(s_b)):
        assert_close(x.to(y.dtype), y, tol, "state:")


# --- chunk against the token loop ---------------------------------------------------------------


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunk_matches_loop_outputs_states_and_gradients(name: str, chunk_size: int) -> None:
    spec = SPECS[name]
    inputs = make_inputs(spec, seed=chunk_size)
    leaves = [x.requires_grad_() for x in [*inputs["initial_weights"], *(v for n, v in inputs.items() if n != "initial_weights" and v is not None)]]
    results, grads = [], []
    for impl in ("naive", "chunk"):
        o, h, state = run(spec, inputs, impl, chunk_size=chunk_size)
        loss = (o * torch.randn(o.shape, generator=gen(1), dtype=F64)).sum() + sum(w.square().sum() for w in state.weights)
        if h is not None:
            loss = loss + (h * torch.randn(h.shape, generator=gen(2), dtype=F64)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
        results.append((o, h, state))
    tol = 0.0 if chunk_size == 1 and name in ("titans_matrix", "vector_gd") else 1e-10
    assert_same_results(*results, tol=tol)
    for g_naive, g_chunk in zip(*grads):
        assert_close(g_chunk, g_naive, 1e-9, "gradient:")


def test_chunk_size_one_is_the_online_rule() -> None:
    """Titans with a matrix memory, no momentum: M_t = r_t M_{t-1} - 2 theta_t (M_{t-1} k_t - v_t) k_t^T, o_t = M_t q_t."""
    spec = MemorySpec(K, K, kind="matrix", optimizer="gd")
    inputs = make_inputs(spec, seed=3)
    o, _, state = run(spec, inputs, "chunk", chunk_size=1)
    M = inputs["initial_weights"][0].expand(2, -1, -1, -1)
    q, k, v, theta, r = inputs["q"], inputs["k"], inputs["v"], inputs["theta"], inputs["log_r"].exp()
    expected = []
    for t in range(q.shape[1]):
        error = 2 * (torch.einsum("bhvk,bhk->bhv", M, k[:, t]) - v[:, t])
        M = r[:, t, :, None, None] * M - theta[:, t, :, None, None] * error[..., None] * k[:, t, :, None, :]
        expected.append(torch.einsum("bhvk,bhk->bhv", M, q[:, t]))
    assert_close(o, torch.stack(expected, dim=1))
    assert_close(state.weights[0], M)


def test_matrix_memory_without_decay_is_the_delta_rule() -> None:
    """With r = 1 and eta = 0 the matrix memory is DeltaNet with beta = 2 theta (spec 5.3)."""
    spec = MemorySpec(K, K, kind="matrix", optimizer="gd")
    inputs = make_inputs(spec, seed=4)
    inputs["log_r"] = torch.zeros_like(inputs["log_r"])
    o, _, state = run(spec, inputs, "chunk", chunk_size=1)
    initial = inputs["initial_weights"][0].transpose(-1, -2).expand(2, -1, -1, -1)  # (B, H, K, V)
    o_ref, s_ref = delta_rule(inputs["q"], inputs["k"], inputs["v"], 2 * inputs["theta"], scale=1.0,
                              initial_state=initial, output_final_state=True)
    assert_close(o, o_ref)
    assert_close(state.weights[0], s_ref.transpose(-1, -2))


def test_larger_chunks_approximate_the_online_rule_with_small_steps() -> None:
    spec = SPECS["titans_mlp"]
    inputs = make_inputs(spec, seed=5)
    inputs["theta"] = 0.01 * inputs["theta"]
    online, chunked = run(spec, inputs, "naive", chunk_size=1)[0], run(spec, inputs, "chunk", chunk_size=8)[0]
    difference = (online - chunked).abs().max()
    assert 1e-9 < difference < 1e-3, "chunk size is part of the model, but with small steps the forms stay close"


def test_long_sequence_float32_matches_float64_loop() -> None:
    spec = SPECS["titans_mlp"]
    inputs = make_inputs(spec, B=1, T=300, seed=6)
    inputs["theta"] = 0.2 * inputs["theta"]  # steps of up to 0.3 with momentum diverge over 300 tokens
    with torch.no_grad():
        o_ref = run(spec, inputs, "naive", chunk_size=16)[0]
        to32 = {n: ([w.float() for w in x] if isinstance(x, list) else x.float() if x is not None else None) for n, x in inputs.items()}
        o, _, state = run(spec, to32, "chunk", chunk_size=16)
    assert o.dtype == torch.float32 and state.weights[0].dtype == torch.float32
    assert_close(o.double(), o_ref, 1e-4)


# --- state passing, decoding and padding ---------------------------------------------------------


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_split_anywhere_with_state_equals_one_call(name: str, impl: str) -> None:
    spec, T = SPECS[name], 23
    inputs = make_inputs(spec, T=T, seed=7)
    full = run(spec, inputs, impl, chunk_size=5)
    for cuts in ([3], [5, 10], [1, 2, 13, 22]):
        outputs, reads, state = [], [], None
        for start, stop in zip([0] + cuts, cuts + [T]):
            o, h, state = run(spec, slice_time(inputs, start, stop), impl, chunk_size=5, initial_state=state)
            outputs.append(o)
            reads.append(h)
        h = None if reads[0] is None else torch.cat(reads, dim=1)
        assert_same_results((torch.cat(outputs, dim=1), h, state), full)


@pytest.mark.parametrize("name", ["titans_mlp", "memora", "atlas"])
def test_token_by_token_decoding_equals_one_call(name: str) -> None:
    spec, T = SPECS[name], 12
    inputs = make_inputs(spec, T=T, seed=8)
    full, state, outputs = run(spec, inputs, "chunk", chunk_size=4), None, []
    for t in range(T):
        o, _, state = run(spec, slice_time(inputs, t, t + 1), "chunk", chunk_size=4, initial_state=state)
        outputs.append(o)
    assert_close(torch.cat(outputs, dim=1), full[0])


@pytest.mark.parametrize("name", ["titans_mlp", "memora", "atlas", "moneta"])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_padded_rows_equal_unpadded_sequences_and_continue(name: str, impl: str) -> None:
    """Left, right and inner padding, rows of different lengths; the returned state continues each row."""
    spec, T = SPECS[name], 17
    inputs = make_inputs(spec, B=3, T=T, seed=9)
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[0, :6] = False
    mask[1, 11:] = False
    mask[2, 3:5] = False
    head, tail = slice_time(inputs, 0, T), slice_time(make_inputs(spec, B=3, T=4, seed=10), 0, 4)
    tail["initial_weights"] = inputs["initial_weights"]
    o, h, state = run(spec, head, impl, chunk_size=4, mask=mask)
    o_next, _, _ = run(spec, tail, impl, chunk_size=4, initial_state=state)
    for row in range(3):
        def select(x: dict, keep: torch.Tensor) -> dict:
            return {n: v[row : row + 1][:, keep] if n in PER_TOKEN and v is not None else v for n, v in x.items()}

        ref_o, ref_h, ref_state = run(spec, select(head, mask[row]), impl, chunk_size=4)
        ref_next = run(spec, select(tail, torch.ones(4, dtype=torch.bool)), impl, chunk_size=4, initial_state=ref_state)[0]
        assert_close(o[row][mask[row]], ref_o[0])
        if h is not None:
            assert_close(h[row][mask[row]], ref_h[0])
        assert_close(o_next[row], ref_next[0])


# --- gradients through the memory updates -----------------------------------------------------------


@pytest.mark.parametrize("name", ["titans_mlp", "moneta", "memora", "atlas"])
def test_gradcheck_chunk(name: str) -> None:
    spec = SPECS[name]
    inputs = make_inputs(spec, B=1, T=4, H=1, seed=11)
    names = ["k", "theta", "log_r"] + (["log_eta"] if spec.optimizer != "gd" else [])

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return run(spec, {**inputs, **dict(zip(names, tensors))}, "chunk", chunk_size=2)[0]

    assert torch.autograd.gradcheck(fn, [inputs[n].clone().requires_grad_() for n in names])


def test_early_keys_reach_late_outputs_through_the_memory() -> None:
    spec = SPECS["titans_mlp"]
    inputs = make_inputs(spec, B=1, T=20, seed=12)
    k = inputs["k"].requires_grad_()
    o = run(spec, inputs, "chunk", chunk_size=4)[0]
    (grad,) = torch.autograd.grad(o[:, -1].sum(), k)
    assert grad[:, 0].abs().sum() > 0, "the last read depends on the first write"
    assert grad[:, -1].abs().sum() > 0


# --- pieces ---------------------------------------------------------------------------------------


def test_newton_schulz_approximates_the_polar_factor() -> None:
    S = torch.randn(3, 6, 4, generator=gen(13), dtype=F64)
    singular = torch.linalg.svdvals(newton_schulz(S, 5))
    assert ((singular > 0.6) & (singular < 1.25)).all()
    U, _, Vh = torch.linalg.svd(S, full_matrices=False)
    cosine = F.cosine_similarity(newton_schulz(S, 5).flatten(1), (U @ Vh).flatten(1))
    assert (cosine > 0.95).all()


def test_memora_weights_stay_on_the_simplex() -> None:
    spec = SPECS["memora"]
    for chunk_size in (1, 4):
        state = run(spec, make_inputs(spec, seed=14), "chunk", chunk_size=chunk_size)[2]
        if chunk_size == 1:
            for w in state.weights:
                assert (w > 0).all()
                assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
        for w in state.anchor:  # the anchor is a softmax output (the lag step) or the initial weights
            assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(kind="tree"), "kind must be one of"),
        (dict(objective="l3"), "objective must be one of"),
        (dict(retention="kl", optimizer="momentum", hidden=4), "supports optimizer='gd' only"),
        (dict(kind="vector", optimizer="muon"), "a vector memory has none"),
        (dict(depth=1, hidden=4), "depth >= 2"),
        (dict(hidden=0), "positive hidden width"),
        (dict(window=0, hidden=4), "window must be a positive int"),
        (dict(p=0.5, hidden=4), "p >= 1"),
    ],
)
def test_bad_spec_raises(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemorySpec(K, K, **options)


def test_bad_inputs_raise_clear_errors() -> None:
    spec = SPECS["titans_mlp"]
    inputs = make_inputs(spec, seed=15)
    with pytest.raises(ValueError, match="needs log_eta"):
        run(spec, {**inputs, "log_eta": None})
    with pytest.raises(ValueError, match="theta must have shape"):
        run(spec, {**inputs, "theta": inputs["theta"][..., None]})
    with pytest.raises(ValueError, match="spec has key_dim"):
        run(MemorySpec(K + 1, K, hidden=6), inputs)
    with pytest.raises(ValueError, match="initial_weights must be a list of 2"):
        run(spec, {**inputs, "initial_weights": inputs["initial_weights"][:1]})
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        run(spec, inputs, chunk_size=0)
    with pytest.raises(TypeError, match="NeuralMemoryState"):
        run(spec, inputs, initial_state=(1, 2))
    with pytest.raises(ValueError, match="optimizer='gd'"):
        gd = MemorySpec(K, K, hidden=6, optimizer="gd")
        run(gd, {**inputs, "log_eta": None}, initial_state=run(spec, inputs)[2])
    huber = SPECS["yaad"]
    with pytest.raises(ValueError, match="needs huber_delta"):
        run(huber, {**make_inputs(huber), "huber_delta": None})
    memora = SPECS["memora"]
    with pytest.raises(ValueError, match="anchor_q is not supported"):
        run(memora, {**make_inputs(memora), "anchor_q": inputs["q"]})
    with pytest.raises(ValueError, match="unknown implementation"):
        run(spec, inputs, "fast")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_a_fully_padded_call_leaves_the_state_unchanged(impl: str) -> None:
    spec = SPECS["atlas"]
    inputs = make_inputs(spec, T=7, seed=16)
    state = run(spec, slice_time(inputs, 0, 3), impl, chunk_size=4)[2]
    after = run(spec, slice_time(inputs, 3, 7), impl, chunk_size=4, initial_state=state, mask=torch.zeros(2, 4, dtype=torch.bool))[2]
    for x, y in zip(state_tensors(after), state_tensors(state)):
        assert_close(x.to(y.dtype), y, 0.0)


def test_bfloat16_inputs_keep_a_float32_state() -> None:
    spec = SPECS["titans_mlp"]
    inputs = make_inputs(spec, seed=17)
    o_ref = run(spec, inputs, "chunk", chunk_size=4)[0]
    low = {n: ([w.bfloat16() for w in x] if isinstance(x, list) else None if x is None else x.bfloat16()) for n, x in inputs.items()}
    o, _, state = run(spec, low, "chunk", chunk_size=4)
    assert o.dtype == torch.bfloat16 and all(w.dtype == torch.float32 for w in state.weights + state.momentum)
    assert ((o.double() - o_ref).norm() / o_ref.norm()) < 3e-2
