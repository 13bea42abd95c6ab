"""Measuring one (op, shape, impl): first call, do_bench times, peak memory, errors; ceilings, decode and profiles."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.kernels.shapes import DECODE, DECODE_TARGET_US, FLA_FUNCTIONS, OUR_FUNCTIONS, Shape
from benchmarks.kernels.roofline import achieved, roofline_model
from benchmarks.kernels.budget import classify, message, time_limit
from benchmarks.kernels.impls import LEAVES, implementation, make_inputs, rel_rms


def peak_bytes(fn: Callable) -> int:
    """CUDA memory allocated above what was allocated before, at the peak of one call."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure(op: str, shape: Shape, impl: str, inputs: dict, ref: dict | None, seconds: float | None,
            timing: tuple[int, int], ceilings: dict, fla_problem: str | None) -> dict:
    """One (op, shape, impl) row: see the module docstring. `seconds` bounds the whole measurement."""
    from triton.testing import do_bench

    deadline = None if seconds is None else time.monotonic() + seconds
    model = roofline_model(op, shape)
    fn_path = {"ours": OUR_FUNCTIONS.get(op), "fla": FLA_FUNCTIONS.get(op), "sdpa": "torch.nn.functional.scaled_dot_product_attention (default backend choice)",
                "sdpa_flash": "torch.nn.functional.scaled_dot_product_attention (FLASH_ATTENTION only)",
               "torch_chunk": f"core.ops.{'delta_rule' if 'delta' in op else 'linear_recurrence'}.chunk"}[impl]
    row: dict = {"op": op, "shape": shape.name, "impl": impl, "function": fn_path, "fwd": {}, "fwdbwd": {}, "errors_vs_float32_chunk": {}, "model": model}
    fwd, fwdbwd = row["fwd"], row["fwdbwd"]

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def fail(phases: list[dict], status: str, text: str) -> None:
        for p in phases:
            if "status" not in p:
                p.update(status=status, message=text)

    if impl == "fla" and fla_problem:
        fail([fwd, fwdbwd], "not installed", fla_problem)
        return row
    try:
        fn, supports = implementation(op, impl)
        if supports is not None:
            ok, why = supports(inputs)
            if not ok:
                fail([fwd, fwdbwd], "not supported", why)
                return row
    except Exception as error:  # noqa: BLE001 - an impl that cannot be set up is recorded, not fatal
        fail([fwd, fwdbwd], classify(error, impl), message(error))
        return row

    scale = shape.D**-0.5
    names = [n for n in LEAVES if n in inputs]
    do = inputs["do"]
    plain = {n: inputs[n] for n in names}
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in names}

    def stage(name: str, body: Callable, phases: list[dict], peak_of: dict | None = None):
        """Run one stage under the measurement's remaining budget; a failure marks `phases` (or, for a
        peak-memory stage, notes the error in `peak_of`) and returns (False, None)."""
        try:
            with time_limit(left(), f"{impl} {op} {shape.name} {name}"):
                return True, body()
        except Exception as error:  # noqa: BLE001 - recorded per stage
            status, text = classify(error, impl), message(error)
            text = text if status == "time budget" else f"{name}: {text}"  # a budget message names its stage
            fail(phases, status, text)
            if peak_of is not None:
                peak_of["peak_error"] = text
            with contextlib.suppress(Exception):  # a sticky CUDA error would raise here again
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            return False, None

    # 1. the first forward and backward: compilation and autotuning, and the errors against the reference
    def first_forward():
        start = time.perf_counter()
        o = fn(**leaves, scale=scale)
        torch.cuda.synchronize()
        fwd["first_call_s"] = time.perf_counter() - start
        return o

    ok, o = stage("first forward", first_forward, [fwd, fwdbwd])
    if not ok:
        return row
    errors = row["errors_vs_float32_chunk"]
    if ref is not None:
        errors["o"] = rel_rms(o, ref["o"])

    def first_backward():
        start = time.perf_counter()
        with torch.autograd.set_multithreading_enabled(False):  # backward on this thread: the alarm can stop it
            grads = torch.autograd.grad(o, list(leaves.values()), do)
        torch.cuda.synchronize()
        fwdbwd["first_call_s"] = time.perf_counter() - start
        return grads

    ok_bwd, grads = stage("first backward", first_backward, [fwdbwd])
    if ok_bwd and ref is not None:
        errors.update({f"d{n}": rel_rms(gr, ref[f"d{n}"]) for n, gr in zip(names, grads)})
    del o, grads

    # 2. forward: time (median of do_bench) and peak memory
    def forward():
        with torch.no_grad():
            return fn(**plain, scale=scale)

    def time_forward():
        forward()
        return do_bench(forward, warmup=timing[0], rep=timing[1], return_mode="median")

    ok, ms = stage("forward timing", time_forward, [fwd])
    if ok:
        fwd.update(status="ok", ms=ms, **achieved(model, "fwd", ms, shape, ceilings))
        ok, peak = stage("forward peak memory", lambda: peak_bytes(forward), [], fwd)
        if ok:
            fwd["peak_bytes"] = peak

    # 3. forward + backward
    if ok_bwd:
        def forward_backward():
            fn(**leaves, scale=scale).backward(do)

        def time_forward_backward():
            forward_backward()
            return do_bench(forward_backward, warmup=timing[0], rep=timing[1], grad_to_none=list(leaves.values()), return_mode="median")

        ok, ms = stage("forward+backward timing", time_forward_backward, [fwdbwd])
        if ok:
            fwdbwd.update(status="ok", ms=ms, **achieved(model, "fwdbwd", ms, shape, ceilings))
            for x in leaves.values():
                x.grad = None
            ok, peak = stage("forward+backward peak memory", lambda: peak_bytes(forward_backward), [], fwdbwd)
            if ok:
                fwdbwd["peak_bytes"] = peak
    for x in leaves.values():
        x.grad = None
    return row


def forward_backward_pass(op: str, impl: str, shape: Shape) -> Callable[[], None]:
    """One forward + backward of an impl on the op's inputs at `shape`; the gradients are dropped after it, as
    do_bench's grad_to_none does, so that no accumulation into .grad is part of a pass."""
    fn, _ = implementation(op, impl)
    inputs = make_inputs(op, shape)
    leaves = {n: inputs[n].detach().requires_grad_() for n in LEAVES if n in inputs}

    def forward_backward() -> None:
        fn(**leaves, scale=shape.D**-0.5).backward(inputs["do"])
        for leaf in leaves.values():
            leaf.grad = None

    return forward_backward


def profile(op: str, impl: str, shape: Shape, seconds: float | None) -> str:
    """CUDA time of each kernel in ten forward + backward passes of an impl (after warm-up, so autotuning is
    excluded), as torch.profiler's table, sorted by total CUDA time (forward_backward_pass: no .grad accumulation)."""
    try:
        with time_limit(seconds, f"profile {op} {shape.name} {impl}"):
            forward_backward = forward_backward_pass(op, impl, shape)
            with torch.autograd.set_multithreading_enabled(False):  # autotuning in the backward stays interruptible
                for _ in range(3):
                    forward_backward()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    forward_backward()
                torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        return message(error)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)


def chosen_configs() -> dict[str, list[dict]]:
    """The config the autotuner chose for each of our kernels, per autotune key it met in this process: warps,
    stages and whether it is the default (the first choice: what runs with SEQMIX_TRITON_AUTOTUNE=0)."""
    from kernels.delta_rule.chunk import AUTOTUNED as DELTA
    from kernels.linear_recurrence.passes import AUTOTUNED as LINEAR

    def config(key: tuple, chosen, default) -> dict:
        return {"key": [str(k) for k in key], "num_warps": chosen.num_warps, "num_stages": chosen.num_stages,
                "default": (chosen.num_warps, chosen.num_stages) == (default.num_warps, default.num_stages)}

    chosen: dict[str, list[dict]] = {}
    for kernel, choices in {**LINEAR, **DELTA}.items():  # a kernel may have several autotuners (config lists)
        for key, config_chosen in kernel.cache.items():
            chosen.setdefault(kernel.base_fn.__name__, []).append(config(key, config_chosen, choices[0]))
    return chosen


def ceilings() -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written) and bf16 8192^3 matmul rate."""
    from triton.testing import do_bench

    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    bandwidth = 2 * x.numel() / (ms * 1e-3)
    del x, y
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return {"copy_bytes_per_s": bandwidth, "bf16_matmul_flops_per_s": 2 * 8192**3 / (ms * 1e-3)}


def decode_times(seconds: float | None) -> dict:
    """One decode step (kernels.common.step.recurrent_step) per layer at B = 1, H = 16, K = V = 128, bf16,
    in microseconds, for the linear recurrence (scalar decay) and the gated delta rule: plain launches
    timed by do_bench (CUDA events, median), plain launches timed on the host (wall clock of 1000 steps,
    launch overhead included), and a CUDA graph of 100 steps replayed (do_bench median / 100)."""
    from triton.testing import do_bench

    from kernels.common.step import recurrent_step

    B, H, D, steps = DECODE["B"], DECODE["H"], DECODE["D"], DECODE["steps_per_graph"]
    out: dict = {"shape": f"B{B}_H{H}_D{D}", "target_us": DECODE_TARGET_US}
    deadline = None if seconds is None else time.monotonic() + seconds
    for op in ("linear_recurrence", "delta_rule"):
        result: dict = {}
        try:
            with time_limit(None if deadline is None else deadline - time.monotonic(), f"decode {op}"):
                q, k, v = (torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                k = F.normalize(k.float(), dim=-1).to(torch.bfloat16)
                g = F.logsigmoid(torch.randn(B, 1, H, device="cuda"))
                beta = torch.sigmoid(torch.randn(B, 1, H, device="cuda")) if op == "delta_rule" else None
                state = torch.zeros(B, H, D, D, device="cuda")
                o = torch.empty_like(v)

                def step():
                    recurrent_step(q, k, v, g, state, beta=beta, out=o)

                step()
                result["events_us"] = 1e3 * do_bench(step, warmup=25, rep=100, return_mode="median")
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(1000):
                    step()
                torch.cuda.synchronize()
                result["wall_us"] = (time.perf_counter() - start) * 1e3
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(steps):
                        step()
                result["cuda_graph_us"] = 1e3 * do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / steps
                result["meets_target"] = {m: result[m] < DECODE_TARGET_US for m in ("events_us", "wall_us", "cuda_graph_us")}
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            result["status"] = classify(error, "ours")
            result["message"] = message(error)
        out[op] = result
    return out
