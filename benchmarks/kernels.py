"""GPU benchmark of the Triton kernels against flash-linear-attention 0.6.0 and PyTorch SDPA, in one run.

    python -m benchmarks.kernels [--quick] [--ops OP ...] [--shapes SHAPE ...] [--impls IMPL ...]
        [--torch-chunk] [--max-seconds-per-impl S] [--max-seconds S] [--profile] [--resume JSON] [--out DIR]

Ops: lr_none (linear recurrence, no decay), lr_scalar (one decay per token and head, [B, T, H]),
gla (one decay per key channel, [B, T, H, K]), delta (DeltaNet), gated_delta (Gated DeltaNet),
attention (causal softmax attention through SDPA: the softmax baseline at the same B, T, H, D) and decode (one token at B = 1, H = 16, D = 128 through kernels.common.step.recurrent_step,
launched plainly and replayed from a CUDA graph, in microseconds).
Impls: ours (kernels.linear_recurrence / kernels.delta_rule), fla (fla-core 0.6.0: chunk_linear_attn,
chunk_simple_gla, chunk_gla, chunk_delta_rule, chunk_gated_delta_rule), sdpa (attention only: PyTorch's
own backend choice, cuDNN on an H100), sdpa_flash (attention only: FlashAttention-2 forced) and,
with --torch-chunk, our PyTorch chunk form in bf16 (slow).
Shapes: named B{B}_T{T}_H{H}_D{D} (K = V = D) or by set: 32k (16x2048, 8x4096, 2x16384 at H = 16,
D = 128: 32K tokens per batch), fla (fla's own benchmark shapes), quick (B8_T4096_H16_D128).
Default: 32k and fla.

For every (op, shape, impl): the first forward and backward run outside the timed region (Triton
compilation and autotuning excluded; their wall time is recorded as first_call_s), then forward and
forward+backward times (triton.testing.do_bench median: CUDA events, L2 cleared before each rep),
tokens/s, peak CUDA memory above the inputs (one call, after warm-up), achieved bytes/s and FLOP/s of
the op's roofline model (`roofline_model`: minimum bytes and FLOPs, the same for every impl) and the
fraction of the roofline floor reached, against the copy bandwidth and bf16 matmul rate measured in
the same run, and the relative RMS error of the output and of every gradient against our PyTorch
chunk form run on float32 upcasts of the same inputs (keys L2-normalised for the delta rule, beta in
(0, 1), g = logsigmoid(x) per head, logsigmoid(x) / 16 per channel for GLA).

Failures are recorded, never fatal: 'refused' (fla raised, e.g. its gated backward on Hopper with
Triton 3.4 - 3.7.0), 'not supported' (our kernel's `supports(...)` says no), 'time budget' (the
measurement ran past --max-seconds-per-impl, or the run past --max-seconds: an alarm interrupts the
Python code, and the first backward runs on the calling thread so that autotuning inside it can be
interrupted too), 'not run' (the global budget was spent before it started), 'out of memory', 'error'.
Our kernels, SDPA and the torch chunk form run first on every shape; fla runs last (its first backward
may autotune for minutes: in session 3 each fla op needed more than 60 s before its first forward or
backward returned). To pay autotuning once across machines, set TRITON_CACHE_AUTOTUNING=1 and a
TRITON_CACHE_DIR that is kept (copied back from the run and carried into the next one). The JSON and markdown are rewritten after every measurement, so a killed
run keeps what it measured; --resume JSON continues such a run, keeping its finished rows.
Output: DIR/kernels_<device>_<date>.{json,md} (default DIR benchmarks/results), with the device,
torch / triton / CUDA / fla versions and the date. Needs a CUDA GPU; on a machine without one it
stops with a message (the pure parts, roofline_model, parse_shapes and markdown, are tested on CPU
in tests/benchmarks/test_kernels.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/kernels.py`: benchmarks/ first on sys.path would shadow `kernels`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F

CHUNK = 64  # chunk size of our kernels and of fla's
SUB_CHUNK = 16  # fla's GLA sub-chunk: the diagonal blocks of the per-channel-decay score matrix
OPS = ("lr_none", "lr_scalar", "gla", "delta", "gated_delta", "attention", "decode")
IMPLS = ("ours", "sdpa", "sdpa_flash", "torch_chunk", "fla")  # run in this order; fla last
SHAPE_SETS = {
    "32k": ("B16_T2048_H16_D128", "B8_T4096_H16_D128", "B2_T16384_H16_D128"),
    "fla": ("B1_T8192_H96_D128", "B4_T2048_H16_D128", "B8_T1024_H8_D64"),
    "quick": ("B8_T4096_H16_D128",),
}
DEFAULT_SHAPES = ("32k", "fla")
DECODE = {"B": 1, "H": 16, "D": 128, "steps_per_graph": 100}
DECODE_TARGET_US = 10.0
OUR_FUNCTIONS = {
    "lr_none": "kernels.linear_recurrence.chunk_linear_recurrence",
    "lr_scalar": "kernels.linear_recurrence.chunk_linear_recurrence",
    "gla": "kernels.linear_recurrence.chunk_linear_recurrence",
    "delta": "kernels.delta_rule.chunk_delta_rule",
    "gated_delta": "kernels.delta_rule.chunk_delta_rule",
}
FLA_FUNCTIONS = {
    "lr_none": "fla.ops.linear_attn.chunk_linear_attn",  # normalize=False
    "lr_scalar": "fla.ops.simple_gla.chunk_simple_gla",
    "gla": "fla.ops.gla.chunk_gla",
    "delta": "fla.ops.delta_rule.chunk_delta_rule",
    "gated_delta": "fla.ops.gated_delta_rule.chunk_gated_delta_rule",
}
UNFINISHED = ("time budget", "not run")  # statuses that --resume measures again


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    D: int  # K = V = D

    @property
    def name(self) -> str:
        return f"B{self.B}_T{self.T}_H{self.H}_D{self.D}"

    @property
    def tokens(self) -> int:
        return self.B * self.T


_SHAPE = re.compile(r"B(\d+)_T(\d+)_H(\d+)_D(\d+)", re.IGNORECASE)


def parse_shape(text: str) -> Shape:
    """'B8_T4096_H16_D128' (fla's naming; K = V = D) -> Shape(8, 4096, 16, 128)."""
    match = _SHAPE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"shape {text!r}: expected B<batch>_T<length>_H<heads>_D<head dim>, e.g. B8_T4096_H16_D128, or a set: {', '.join(SHAPE_SETS)}")
    shape = Shape(*map(int, match.groups()))
    if min(shape.B, shape.T, shape.H, shape.D) < 1:
        raise ValueError(f"shape {text!r}: every size must be at least 1")
    return shape


def parse_shapes(items: list[str] | tuple[str, ...]) -> list[Shape]:
    """Shape names and set names (32k, fla, quick), space- or comma-separated, in order, without repeats."""
    shapes: list[Shape] = []
    for item in (part for text in items for part in text.split(",") if part.strip()):
        for name in SHAPE_SETS.get(item.strip().lower(), (item,)):
            shape = parse_shape(name)
            if shape not in shapes:
                shapes.append(shape)
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def parse_names(items: list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> list[str]:
    """Space- or comma-separated names among `allowed`, returned in `allowed`'s order."""
    names = {part.strip().lower() for text in items for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose among {', '.join(allowed)}")
    return [name for name in allowed if name in names]


def impls_for(op: str, impls: list[str]) -> list[str]:
    """The impls that compute `op`: SDPA only the attention op, the others every recurrent op."""
    if op == "decode":
        return []
    return [i for i in impls if i.startswith("sdpa") == (op == "attention")]


# --------------------------------------------------------------------------- roofline model


def roofline_model(op: str, shape: Shape, chunk: int = CHUNK, sub_chunk: int = SUB_CHUNK) -> dict:
    """Minimum bytes and FLOPs of an op's forward and forward + backward at bf16 (g fp32, beta bf16).

    Bytes: every input read once, every output written once (forward: q, k, v, g, beta in, o out;
    backward: q, k, v, g, beta, dO in, their gradients out); SDPA also writes and reads its fp32
    log-sum-exp. FLOPs: the matmuls of the chunked algorithm, per (chunk of C = 64 tokens, head),
    with 2CKV for a [C, K] x [K, V] product (from kernels/linear_recurrence/README.md and
    kernels/delta_rule/README.md):
    - linear recurrence, forward: state update, Q h (2 x 2CKV), Q K^T (2C^2K), A V (2C^2V); backward:
      recomputed state, dh, K dh, dO h^T, V dh^T (5 x 2CKV), four C^2K and three C^2V products.
    - GLA (decay per key channel): the same matmul FLOPs as the scalar decay, plus the sub-chunk work
      of the score matrix: its diagonal S x S blocks (S = 16, fla's sub-chunk) are computed elementwise,
      2 FLOPs per (pair, channel), 2CSK per chunk forward and twice that backward (dq, dk); exps and the
      O(CK) gate scalings are not counted.
    - delta rule, forward: K K^T, W = T Kb, U = T Vb, W h and the state update, Q h, Q K^T, A U~
      (3 x 2CKV + 3 x 2C^2K + 2 x 2C^2V); backward 2.5 x the forward.
    - causal attention: 4 T(T+1)/2 D per (batch, head) forward (Q K^T and P V over the causal half),
      2.5 x that backward (Q K^T recomputed, dV, dP, dQ, dK).
    The gate of lr_scalar and gated_delta adds g [B, T, H] fp32; gla's g is [B, T, H, K] fp32.
    `*_bytes_scheduled`, where given, is what our kernels move as scheduled (per-chunk states h, dh,
    T, W, U written and read back, recomputation), from the same READMEs.
    """
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    K = V = D
    n = B * T * H  # token-heads
    e, e32 = 2, 4  # bytes of bf16, fp32
    chunks = B * H * math.ceil(T / chunk)
    ckv, cck, ccv = 2 * chunk * K * V, 2 * chunk * chunk * K, 2 * chunk * chunk * V
    q = k = n * K * e
    v = o = n * V * e
    g = {"lr_scalar": n * e32, "gated_delta": n * e32, "gla": n * K * e32}.get(op, 0)
    model: dict = {"op": op, "shape": shape.name, "chunk": chunk}
    if op == "attention":
        lse = n * e32
        fwd_bytes = q + k + v + o + lse
        bwd_bytes = q + k + v + o + o + lse + q + k + v  # read q, k, v, o, dO, lse; write dq, dk, dv
        fwd_flops = B * H * 4 * D * T * (T + 1) // 2
        bwd_flops = int(2.5 * fwd_flops)
    elif op in ("lr_none", "lr_scalar", "gla"):
        fwd_bytes = q + k + v + g + o
        bwd_bytes = q + k + v + g + o + q + k + v + g  # read q, k, v, g, dO; write dq, dk, dv, dg
        fwd_flops = chunks * (2 * ckv + cck + ccv)
        bwd_flops = chunks * (5 * ckv + 4 * cck + 3 * ccv)
        if op == "gla":
            fwd_flops += chunks * 2 * chunk * sub_chunk * K
            bwd_flops += chunks * 4 * chunk * sub_chunk * K
        else:
            h = chunks * K * V * e  # per-chunk states
            qkv = q + k + v
            model["fwd_bytes_scheduled"] = fwd_bytes + 2 * h  # h written and read
            # h recomputed (write + read), dh (write + 2 reads), q, k, v, dO re-read by each pass
            model["fwdbwd_bytes_scheduled"] = model["fwd_bytes_scheduled"] + bwd_bytes + 3 * h + 2 * h + 3 * qkv
    elif op in ("delta", "gated_delta"):
        beta = n * e
        fwd_bytes = q + k + v + beta + g + o
        bwd_bytes = q + k + v + o + beta + g + q + k + v + beta + g  # read q, k, v, dO, beta, g; write their gradients
        fwd_flops = chunks * (3 * ckv + 3 * cck + 2 * ccv)
        bwd_flops = int(2.5 * fwd_flops)
        h, tm, gb = chunks * K * V * e, chunks * chunk * chunk * e32, beta + g  # states; T (fp32)
        wy = k + v + gb + tm + k + v  # read k, v, beta, g; write T, W, U
        state = 2 * k + v + h + v  # read k, W, U; write h, U~
        fwd_sched = wy + state + q + k + v + h + o  # output: read q, k, U~, h; write o
        bwd_sched = (
            wy + state  # recomputed
            + q + k + v + 2 * v  # chunk-local dU~: read q, k, dO; write fp32
            + q + 2 * k + v + 2 * v + h + 2 * v  # reverse pass: read q, k, W, dO, fp32 dU~; write dh, fp32 dU~
            + q + k + 2 * v + 2 * h + q + 2 * k + n * e32  # dQ/dK/dg: read q, k, U~, dO, h, dh; write dq, fp32 dk, dg
            + 2 * k + v + gb + tm + h + 2 * v + 4 * k + 2 * tm + k + v + gb  # WY backward
        )
        model["fwd_bytes_scheduled"] = fwd_sched
        model["fwdbwd_bytes_scheduled"] = fwd_sched + bwd_sched
    else:
        raise ValueError(f"no roofline model for op {op!r}")
    model.update(
        fwd_bytes=fwd_bytes, fwd_flops=fwd_flops,
        fwdbwd_bytes=fwd_bytes + bwd_bytes, fwdbwd_flops=fwd_flops + bwd_flops,
    )
    return model


def achieved(model: dict, phase: str, ms: float, shape: Shape, ceilings: dict | None) -> dict:
    """tokens/s, bytes/s and FLOP/s of the model at `ms` for phase 'fwd' or 'fwdbwd', and, given the
    measured ceilings, the roofline floor max(bytes / bandwidth, FLOPs / matmul rate) and the fraction
    of it reached (floor / measured: 1 is the roofline)."""
    seconds = ms * 1e-3
    out = {
        "tokens_per_s": shape.tokens / seconds,
        "bytes_per_s": model[f"{phase}_bytes"] / seconds,
        "flops_per_s": model[f"{phase}_flops"] / seconds,
    }
    if ceilings:
        bandwidth, rate = ceilings["copy_bytes_per_s"], ceilings["bf16_matmul_flops_per_s"]
        floor_ms = 1e3 * max(model[f"{phase}_bytes"] / bandwidth, model[f"{phase}_flops"] / rate)
        out.update(floor_ms=floor_ms, roofline_fraction=floor_ms / ms,
                   bound="memory" if model[f"{phase}_bytes"] / bandwidth >= model[f"{phase}_flops"] / rate else "compute")
    return out


# --------------------------------------------------------------------------- time budget


class TimeBudgetExceeded(Exception):
    pass


_alarm = {"fired": False, "what": ""}


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise TimeBudgetExceeded in the main thread once `seconds` have passed (None: no limit).

    SIGALRM runs its handler between Python bytecodes of the main thread, so it interrupts Python
    loops (Triton's autotuner, do_bench) but not a single long C call. If the exception is swallowed
    (raised inside a __del__, say), the alarm fires again every second until the block ends.
    """
    _alarm.update(fired=False, what=f"{what}: over its {seconds:g} s budget" if seconds and seconds > 0 else f"{what}: no time left")
    if seconds is None:
        yield
        return
    if seconds <= 0:
        _alarm["fired"] = True
        raise TimeBudgetExceeded(_alarm["what"])

    def handler(signum, frame):
        _alarm["fired"] = True
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise TimeBudgetExceeded(_alarm["what"])

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(error: BaseException, impl: str) -> str:
    """Status of a failed stage: time budget, out of memory, refused (fla raised), or error."""
    if isinstance(error, TimeBudgetExceeded) or _alarm["fired"]:
        return "time budget"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error):
        return "out of memory"
    return "refused" if impl == "fla" else "error"


def message(error: BaseException) -> str:
    """One line, at most 400 characters; a time-budget stop (possibly wrapped by the code it interrupted) says what ran out."""
    if isinstance(error, TimeBudgetExceeded) or _alarm["fired"]:
        return f"time budget: {_alarm['what']}"
    return " ".join(f"{type(error).__name__}: {error}".split())[:400]


# --------------------------------------------------------------------------- inputs and implementations


def make_inputs(op: str, shape: Shape, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """Random non-zero inputs of `op`, the same for every impl (seeded by op and shape): q, k, v, dO in
    `dtype`; keys L2-normalised for the delta rule; beta = sigmoid(x) in (0, 1) in `dtype`; g fp32:
    logsigmoid(x) [B, T, H] for lr_scalar and gated_delta, logsigmoid(x) / 16 [B, T, H, K] for gla."""
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(f"{op}/{shape.name}".encode()))

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    inputs = {"q": randn(B, T, H, D).to(dtype), "k": randn(B, T, H, D), "v": randn(B, T, H, D).to(dtype)}
    inputs["k"] = (F.normalize(inputs["k"], dim=-1) if op in ("delta", "gated_delta") else inputs["k"]).to(dtype)
    if op in ("lr_scalar", "gated_delta"):
        inputs["g"] = F.logsigmoid(randn(B, T, H))
    elif op == "gla":
        inputs["g"] = F.logsigmoid(randn(B, T, H, D)) / 16
    if op in ("delta", "gated_delta"):
        inputs["beta"] = torch.sigmoid(randn(B, T, H)).to(dtype)
    inputs["do"] = randn(B, T, H, D).to(dtype)
    return inputs


def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def implementation(op: str, impl: str) -> tuple[Callable, Callable | None]:
    """(fn(q, k, v, g=None, beta=None, scale) -> o, supports(inputs) -> (bool, why) or None) of an impl."""
    if impl.startswith("sdpa"):  # "sdpa": PyTorch's own backend choice (cuDNN on an H100); "sdpa_flash": FlashAttention-2
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa(q, k, v, scale, **_):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if impl == "sdpa_flash" else nullcontext():
                o = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True, scale=scale)
            return o.transpose(1, 2)

        return sdpa, None
    delta = op in ("delta", "gated_delta")
    if impl == "torch_chunk":
        return _torch_chunk(op), None
    if impl == "ours":
        fn = _import(OUR_FUNCTIONS[op])
        supports = _import(OUR_FUNCTIONS[op].rsplit(".", 1)[0] + ".supports")
        if delta:
            def ours(q, k, v, scale, beta, g=None):
                return fn(q, k, v, beta, g, scale=scale)[0]

            def check(x):
                return supports(x["q"], x["v"]), "kernels.delta_rule.supports(q, v) is False"
        else:
            def ours(q, k, v, scale, g=None):
                return fn(q, k, v, g, scale=scale)[0]

            def check(x):
                g = x.get("g")
                shape = "None" if g is None else f"{g.dim()}-D g {tuple(g.shape)} {g.dtype}"
                return supports(x["q"], x["v"], g), f"kernels.linear_recurrence.supports(q, v, g) is False for {shape}"
        return ours, check
    if impl == "fla":
        fn = _import(FLA_FUNCTIONS[op])
        calls = {
            "lr_none": lambda q, k, v, scale, **_: fn(q, k, v, scale=scale, normalize=False)[0],
            "lr_scalar": lambda q, k, v, scale, g, **_: fn(q, k, v, g=g, scale=scale)[0],
            "gla": lambda q, k, v, scale, g, **_: fn(q, k, v, g, scale=scale)[0],
            "delta": lambda q, k, v, scale, beta, **_: fn(q, k, v, beta, scale=scale)[0],
            "gated_delta": lambda q, k, v, scale, g, beta, **_: fn(q, k, v, g, beta, scale=scale)[0],
        }
        return calls[op], None
    raise ValueError(f"unknown impl {impl!r}")


def _torch_chunk(op: str) -> Callable:
    """Our PyTorch chunk form (core.ops ... chunk) with the kernels' call signature (g None -> zeros)."""
    from core.ops.delta_rule.chunk import chunk_delta_rule
    from core.ops.linear_recurrence.chunk import chunk_linear_recurrence

    def zeros_if_none(g, q):
        return torch.zeros(q.shape[:3], device=q.device) if g is None else g

    if op in ("delta", "gated_delta"):
        return lambda q, k, v, scale, beta, g=None: chunk_delta_rule(q, k, v, beta, zeros_if_none(g, q), scale, None, False)[0]
    return lambda q, k, v, scale, g=None: chunk_linear_recurrence(q, k, v, zeros_if_none(g, q), scale, None, False)[0]


LEAVES = ("q", "k", "v", "g", "beta")


def reference(op: str, inputs: dict, scale: float) -> dict:
    """Output and gradients of our chunk form on float32 upcasts (TF32 off), for the relative errors."""
    leaves = {n: inputs[n].float().requires_grad_() for n in LEAVES if n in inputs}
    o = _torch_chunk(op)(**leaves, scale=scale)
    grads = torch.autograd.grad(o, list(leaves.values()), inputs["do"].float())
    return {"o": o.detach(), **{f"d{n}": g for n, g in zip(leaves, grads)}}


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref).norm() / ref.norm()).item()


# --------------------------------------------------------------------------- measuring


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


def profile(op: str, shape: Shape, seconds: float | None) -> str:
    """CUDA time of each kernel in ten forward + backward passes of ours (after warm-up, so autotuning is
    excluded), as torch.profiler's table, sorted by total CUDA time."""
    try:
        with time_limit(seconds, f"profile {op} {shape.name}"):
            fn, _ = implementation(op, "ours")
            inputs = make_inputs(op, shape)
            leaves = {n: inputs[n].detach().requires_grad_() for n in LEAVES if n in inputs}
            with torch.autograd.set_multithreading_enabled(False):  # autotuning in the backward stays interruptible
                for _ in range(3):
                    fn(**leaves, scale=shape.D**-0.5).backward(inputs["do"])
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    fn(**leaves, scale=shape.D**-0.5).backward(inputs["do"])
                torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        return message(error)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)


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


# --------------------------------------------------------------------------- report


def _fmt_ms(p: dict) -> str:
    return f"{p['ms']:.3f}" if p.get("status") == "ok" else p.get("status", "-")


def _fmt_rate(p: dict) -> str:
    if p.get("status") != "ok":
        return "-"
    text = f"{p['bytes_per_s'] / 1e12:.2f} TB/s, {p['flops_per_s'] / 1e12:.0f} TFLOP/s"
    return text + (f", {100 * p['roofline_fraction']:.0f} %" if "roofline_fraction" in p else "")


def _fmt_peak(row: dict) -> str:
    peaks = [f"{row[p]['peak_bytes'] / 2**30:.2f}" if "peak_bytes" in row[p] else "-" for p in ("fwd", "fwdbwd")]
    return " / ".join(peaks)


def _fmt_errors(errors: dict) -> str:
    if "o" not in errors:
        return "-"
    grads = [v for n, v in errors.items() if n != "o"]
    return f"{errors['o']:.1e} / " + (f"{max(grads):.1e}" if grads else "-")


def targets(result: dict) -> dict:
    """The issue's targets: decode under 10 us per layer at batch 1; our peak memory no higher than fla's
    (forward + backward where both ran, else forward)."""
    out: dict = {"decode_under_us": DECODE_TARGET_US, "decode": {}, "peak_memory_vs_fla": []}
    for op, r in (result.get("decode") or {}).items():
        if isinstance(r, dict) and "cuda_graph_us" in r:
            out["decode"][op] = r["meets_target"]
    rows = {(r["op"], r["shape"], r["impl"]): r for r in result.get("rows", [])}
    for (op, shape, impl), ours in rows.items():
        fla = rows.get((op, shape, "fla"))
        if impl != "ours" or fla is None:
            continue
        for phase in ("fwdbwd", "fwd"):
            if "peak_bytes" in ours[phase] and "peak_bytes" in fla[phase]:
                out["peak_memory_vs_fla"].append({
                    "op": op, "shape": shape, "phase": phase, "ours_bytes": ours[phase]["peak_bytes"],
                    "fla_bytes": fla[phase]["peak_bytes"], "met": ours[phase]["peak_bytes"] <= fla[phase]["peak_bytes"],
                })
                break
    return out


def markdown(result: dict) -> str:
    """The report: versions and ceilings, decode times, one table row per (op, shape, impl), targets."""
    v = result.get("versions", {})
    c = result.get("ceilings") or {}
    lines = [
        f"# Kernels: {result.get('device', '?')}, {result.get('date', '?')}",
        "",
        f"torch {v.get('torch')}, triton {v.get('triton')}, CUDA {v.get('cuda')}, fla {v.get('fla')}; bf16; "
        f"{result.get('timing', '')}; autotuning excluded.",
    ]
    if c:
        lines.append(f"Ceilings measured in the same run: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                     f"bf16 matmul {c['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s.")
    lines += [
        "",
        "Rates are the op's minimum bytes and FLOPs (the same model for every impl) over the measured time; "
        "% is the roofline floor max(bytes / copy bandwidth, FLOPs / matmul rate) over the measured time. "
        "Peak: CUDA memory above the inputs during one forward / forward + backward. Errors: relative RMS "
        "of o / the worst gradient against our chunk form on float32 upcasts.",
    ]
    decode = result.get("decode") or {}
    if any(isinstance(r, dict) for r in decode.values()):
        lines += ["", f"Decode step, {decode.get('shape')}, microseconds per layer (target < {DECODE_TARGET_US:g}):", "",
                  "| op | plain (CUDA events) | plain (host wall clock) | CUDA graph replay |", "| --- | --- | --- | --- |"]
        for op, r in decode.items():
            if isinstance(r, dict):
                cells = [f"{r[m]:.2f}" if m in r else r.get("status", "-") for m in ("events_us", "wall_us", "cuda_graph_us")]
                lines.append(f"| {op} | " + " | ".join(cells) + " |")
    notes: list[str] = []

    def note(text: str | None) -> str:
        if not text:
            return ""
        if text not in notes:
            notes.append(text)
        return f" [{notes.index(text) + 1}]"

    lines += ["", "| op | shape | impl | fwd ms | fwd+bwd ms | fwd Mtok/s | fwd+bwd Mtok/s | fwd rate | fwd+bwd rate | peak GiB fwd / fwd+bwd | rel. error o / grads |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result.get("rows", []):
        f, fb = row["fwd"], row["fwdbwd"]
        cells = [
            row["op"], row["shape"], row["impl"],
            _fmt_ms(f) + note(f.get("message")), _fmt_ms(fb) + note(fb.get("message") if fb.get("message") != f.get("message") else None),
            f"{f['tokens_per_s'] / 1e6:.1f}" if f.get("status") == "ok" else "-",
            f"{fb['tokens_per_s'] / 1e6:.1f}" if fb.get("status") == "ok" else "-",
            _fmt_rate(f), _fmt_rate(fb), _fmt_peak(row), _fmt_errors(row.get("errors_vs_float32_chunk", {})),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[{i + 1}] {text}" for i, text in enumerate(notes)]
    t = targets(result)
    lines += ["", "Targets:"]
    for op, met in t["decode"].items():
        lines.append(f"- decode {op} under {DECODE_TARGET_US:g} us: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in met.items()))
    for p in t["peak_memory_vs_fla"]:
        lines.append(f"- peak memory {p['op']} {p['shape']} ({p['phase']}): ours {p['ours_bytes'] / 2**30:.2f} GiB, "
                     f"fla {p['fla_bytes'] / 2**30:.2f} GiB: {'met' if p['met'] else 'not met'}")
    if not t["decode"] and not t["peak_memory_vs_fla"]:
        lines.append("- nothing to compare yet")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run


def versions() -> tuple[dict, str | None]:
    """torch, triton, CUDA, Python, fla versions (fla None if it does not import) and fla's import error."""
    import triton

    out = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "fla": None}
    problem = None
    try:
        import fla

        try:
            from importlib.metadata import version

            out["fla"] = version("fla-core")
        except Exception:  # noqa: BLE001 - installed with --target: metadata may still be there, else the module's
            out["fla"] = getattr(fla, "__version__", "unknown")
    except Exception as error:  # noqa: BLE001
        problem = f"fla does not import: {message(error)}"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                           cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except Exception:  # noqa: BLE001
        out["git_commit"] = None
    return out, problem


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape (B8_T4096_H16_D128) and shorter timing runs")
    parser.add_argument("--ops", nargs="+", default=list(OPS), help=f"among {', '.join(OPS)} (default: all)")
    parser.add_argument("--shapes", nargs="+", help=f"B<b>_T<t>_H<h>_D<d> names or sets {', '.join(SHAPE_SETS)} (default: 32k fla)")
    parser.add_argument("--impls", nargs="+", default=["ours", "sdpa", "sdpa_flash", "fla"], help=f"among {', '.join(IMPLS)} (default: ours sdpa sdpa_flash fla)")
    parser.add_argument("--torch-chunk", action="store_true", help="also time our PyTorch chunk form in bf16 (slow)")
    parser.add_argument("--max-seconds-per-impl", type=float, default=240.0,
                        help="budget of one (op, shape, impl) measurement, first call (autotuning) included (default 240)")
    parser.add_argument("--max-seconds", type=float, default=None, help="budget of the whole run (default: none)")
    parser.add_argument("--profile", action="store_true", help="also print and record the time of each kernel of ours (forward + backward) per op, at the first shape")
    parser.add_argument("--resume", type=Path, help="a JSON of an earlier run on this device: keep its finished rows, measure the rest")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    try:
        args.ops = parse_names(args.ops, OPS, "ops")
        args.impls = parse_names(args.impls + (["torch_chunk"] if args.torch_chunk else []), IMPLS, "impls")
        args.shapes = parse_shapes(args.shapes or (["quick"] if args.quick else list(DEFAULT_SHAPES)))
    except ValueError as error:
        parser.error(str(error))
    return args


def plan(ops: list[str], shapes: list[Shape], impls: list[str]) -> list[tuple[str, Shape, str]]:
    """(op, shape, impl) in run order: every impl but fla on every shape first, then fla."""
    first = [(op, s, i) for s in shapes for op in ops for i in impls_for(op, impls) if i != "fla"]
    return first + [(op, s, "fla") for s in shapes for op in ops if "fla" in impls_for(op, impls)]


def finished(rows: list[dict]) -> dict:
    """Rows of an earlier run that need no new measurement, by (op, shape, impl)."""
    return {(r["op"], r["shape"], r["impl"]): r for r in rows
            if r["fwd"].get("status") not in UNFINISHED and r["fwdbwd"].get("status") not in UNFINISHED}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/kernels.py times CUDA kernels and needs a CUDA GPU; torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Its roofline model, shape parsing and "
            "table formatting run on CPU: tests/benchmarks/test_kernels.py."
        )
    start = time.monotonic()
    deadline = None if args.max_seconds is None else start + args.max_seconds
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 references in full precision
    torch.backends.cudnn.allow_tf32 = False
    timing = (10, 50) if args.quick else (25, 200)
    device = torch.cuda.get_device_name()
    vers, fla_problem = versions()
    if fla_problem and "fla" in args.impls:
        print(fla_problem, flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result: dict = {
        "benchmark": "kernels", "device": device, "date": date, "versions": vers,
        "command": " ".join(["python -m benchmarks.kernels", *(argv if argv is not None else sys.argv[1:])]),
        "dtype": "bfloat16 (g float32)", "chunk_size": CHUNK,
        "timing": f"triton.testing.do_bench median, warmup {timing[0]} ms, rep {timing[1]} ms",
        "budgets_s": {"per_impl": args.max_seconds_per_impl, "run": args.max_seconds},
        "ceilings": None, "decode": None, "rows": [], "earlier_runs": [],
    }
    done: dict = {}
    if args.resume:
        earlier = json.loads(args.resume.read_text())
        if earlier.get("device") != device:
            raise SystemExit(f"--resume {args.resume}: measured on {earlier.get('device')!r}, this is {device!r}")
        done = finished(earlier.get("rows", []))
        result["earlier_runs"] = earlier.get("earlier_runs", []) + [{k: earlier.get(k) for k in ("date", "versions", "ceilings", "timing", "command")}]
        if earlier.get("decode") and not any("status" in r for r in earlier["decode"].values() if isinstance(r, dict)):
            result["decode"] = earlier["decode"]
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = args.out / f"kernels_{slug}_{date[:10]}.json"

    def save() -> None:
        result["rows"].sort(key=lambda r: order.get((r["op"], r["shape"], r["impl"]), len(order)))
        result["targets"] = targets(result)
        path.write_text(json.dumps(result, indent=1))
        path.with_suffix(".md").write_text(markdown(result))

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def budget() -> float | None:
        remaining = left()
        return args.max_seconds_per_impl if remaining is None else min(args.max_seconds_per_impl, remaining)

    todo = plan(args.ops, args.shapes, args.impls)
    order = {(op, s.name, i): n for n, (op, s, i) in enumerate(todo)}
    result["ceilings"] = ceilings()
    c = result["ceilings"]
    print(f"{device}; ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {c['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    if "decode" in args.ops and result["decode"] is None:
        result["decode"] = decode_times(budget())
        print(f"decode: {result['decode']}", flush=True)
    if args.profile:
        result["profiles"] = {}
        for op in (o for o in args.ops if "ours" in impls_for(o, args.impls)):
            result["profiles"][op] = table = profile(op, args.shapes[0], budget())
            print(f"profile of ours, {op} {args.shapes[0].name}, ten forward + backward passes:\n{table}", flush=True)
            torch.cuda.empty_cache()
    result["rows"] = [r for key, r in done.items() if key not in order]  # earlier rows outside this run's plan
    save()
    cache: dict = {}  # (op, shape) -> (inputs, reference) of the current pass
    for op, shape, impl in todo:
        key = (op, shape.name, impl)
        if key in done:
            result["rows"].append(done[key])
            continue
        if left() is not None and left() <= 0:
            row = {"op": op, "shape": shape.name, "impl": impl, "errors_vs_float32_chunk": {}, "model": roofline_model(op, shape),
                   "fwd": {"status": "not run", "message": f"the run's {args.max_seconds:g} s budget (--max-seconds) was spent"}}
            row["fwdbwd"] = dict(row["fwd"])
            result["rows"].append(row)
            continue
        if (op, shape.name) not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            inputs = make_inputs(op, shape)
            ref = None
            if op != "attention":
                try:
                    with time_limit(left(), f"float32 reference {op} {shape.name}"):
                        ref = reference(op, inputs, shape.D**-0.5)
                except Exception as error:  # noqa: BLE001 - rows then have no errors, and say why
                    print(f"reference {op} {shape.name} failed: {message(error)}", flush=True)
                    torch.cuda.empty_cache()
            cache[(op, shape.name)] = (inputs, ref)
        inputs, ref = cache[(op, shape.name)]
        row = measure(op, shape, impl, inputs, ref, budget(), timing, c, fla_problem)
        row["date"] = date
        result["rows"].append(row)
        save()
        torch.cuda.empty_cache()
        f, fb = row["fwd"], row["fwdbwd"]
        print(f"{op:<12}{shape.name:<20}{impl:<12} fwd {_fmt_ms(f):>10}  fwd+bwd {_fmt_ms(fb):>12}  peak {_fmt_peak(row):>12} GiB  "
              f"errors {_fmt_errors(row['errors_vs_float32_chunk'])}  {f.get('message') or fb.get('message') or ''}", flush=True)
    cache.clear()
    save()
    print("\n" + markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md')} in {time.monotonic() - start:.0f} s")
    return result


if __name__ == "__main__":
    main()
