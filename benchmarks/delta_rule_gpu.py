"""Time the Triton (gated) delta rule against the chunked PyTorch form, fla 0.6 (if importable) and SDPA.

    PYTHONPATH=. python benchmarks/delta_rule_gpu.py [--out DIR] [--quick] [--profile] [--shapes B,T,H,D ...]

For each shape and gate (Gated DeltaNet's scalar decay per head, or none: DeltaNet): forward and
forward+backward, median of triton.testing.do_bench after warm-up runs (compilation and autotuning
excluded), with the relative RMS error of the output and of every gradient against the chunk form on
float32 upcasts, in the same run. Keys are L2-normalised, beta in (0, 1). fla's chunk_gated_delta_rule
and chunk_delta_rule are timed when fla imports (fla 0.6.0 refuses its gated backward on Hopper with
Triton 3.4 - 3.7.0; the refusal is recorded); causal SDPA (FlashAttention) is timed as the softmax
baseline (no error: it is a different op). Also times the single-token decode step of both ops at
batch 1 (eager and replayed from a CUDA graph). Same discipline and table as linear_recurrence_gpu.py,
whose timing and accuracy helpers this script reuses. Writes JSON (device, versions, date) to DIR.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from benchmarks.linear_recurrence_gpu import _fla_version, accuracy, bench_one, ceilings, device_name, print_table
from core.ops.delta_rule.chunk import chunk_delta_rule as torch_chunk
from kernels.delta_rule import chunk_delta_rule as triton_chunk

SHAPES = [(8, 4096, 16, 128, 128), (2, 16384, 16, 128, 128)]  # (B, T, H, K, V); 32K tokens per batch
C = 64
DEVICE = "cuda"


def implementations() -> dict:
    def ours(q, k, v, beta, g, scale):
        return triton_chunk(q, k, v, beta, g, scale=scale)[0]

    def chunk(q, k, v, beta, g, scale):
        g = torch.zeros(q.shape[:3], device=q.device) if g is None else g
        return torch_chunk(q, k, v, beta, g, scale, None, False)[0]

    impls = {"triton": ours, "torch_chunk": chunk}
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as error:  # noqa: BLE001 - any import failure means "skip fla"
        print(f"fla not importable, skipped: {error!r}")
        return impls

    def fla(q, k, v, beta, g, scale):
        if g is None:
            return chunk_delta_rule(q, k, v, beta, scale=scale)[0]
        return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)[0]

    impls["fla"] = fla
    return impls


def sdpa(q, k, v, beta, g, scale):
    """Causal softmax attention on the same q, k, v (FlashAttention through PyTorch SDPA)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2)


def roofline(B: int, T: int, H: int, K: int, V: int, ceiling: dict) -> dict:
    """Floors of forward and forward+backward (bf16 inputs): bytes that must move vs matmul FLOPs.

    FLOPs per (chunk, head), forward: K K^T, W = T Kb, U = T Vb (2C^2K + 2C^2K + 2C^2V), W h and the
    state update (2 x 2CKV), Q h, Q K^T, A U~ (2CKV + 2C^2K + 2C^2V); the backward recomputes the
    forward but the output, then does about twice the forward's work again (2.5x the forward in all).
    "impl" bytes count what these kernels move as scheduled (see kernels/delta_rule/README.md).
    """
    chunks = B * H * triton.cdiv(T, C)
    n, e = B * T * H, 2  # tokens x heads, bytes per bf16 element
    qk, vv, gb = n * K * e, n * V * e, 2 * n * 4  # one of q or k; one of v, o, u, ...; beta and g (fp32)
    h, tm = chunks * K * V * e, chunks * C * C * 4  # per-chunk states; per-chunk T (fp32)
    fwd_min = 2 * qk + 2 * vv + gb
    bwd_min = 2 * qk + 2 * vv + gb + 2 * qk + vv + gb  # read q, k, v, do, beta, g; write dq, dk, dv, dbeta, dg
    wy = qk + vv + gb + tm + qk + vv  # read k, v, beta, g; write T, W, U
    state = 2 * qk + vv + h + vv  # read k, W, U; write h, U~
    fwd_impl = wy + state + 2 * qk + vv + h + vv  # output: read q, k, U~, h; write o
    bwd_impl = (
        wy + state  # recomputed
        + 2 * qk + vv + 2 * vv  # chunk-local dU~: read q, k, do; write fp32
        + 3 * qk + vv + 2 * vv + h + 2 * vv  # reverse pass: read q, k, W, do, fp32 dU~; write dh, fp32 dU~
        + 2 * qk + 2 * vv + 2 * h + qk + 2 * qk + n * 4  # dQ/dK/dg: read q, k, U~, do, h, dh; write dq, fp32 dk, dg
        + 2 * qk + vv + gb + tm + h + 2 * vv + 4 * qk + 2 * tm + qk + vv + gb  # WY backward
    )
    ckv, cck, ccv = 2 * C * K * V, 2 * C * C * K, 2 * C * C * V
    fwd_flops = chunks * (3 * ckv + 3 * cck + 2 * ccv)
    bwd_flops = int(2.5 * fwd_flops)
    bw, rate = ceiling["copy_bytes_per_s"], ceiling["bf16_matmul_flops_per_s"]
    return {
        "fwd_bytes_min": fwd_min, "fwd_bytes_impl": fwd_impl, "fwd_flops": fwd_flops,
        "fwdbwd_bytes_min": fwd_min + bwd_min, "fwdbwd_bytes_impl": fwd_impl + bwd_impl, "fwdbwd_flops": fwd_flops + bwd_flops,
        "fwd_floor_ms": 1e3 * max(fwd_min / bw, fwd_flops / rate),
        "fwd_impl_floor_ms": 1e3 * max(fwd_impl / bw, fwd_flops / rate),
        "fwdbwd_floor_ms": 1e3 * max((fwd_min + bwd_min) / bw, (fwd_flops + bwd_flops) / rate),
        "fwdbwd_impl_floor_ms": 1e3 * max((fwd_impl + bwd_impl) / bw, (fwd_flops + bwd_flops) / rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--shapes", nargs="*", help="B,T,H,D (K = V = D); default: 8,4096,16,128 and 2,16384,16,128")
    parser.add_argument("--profile", action="store_true", help="also print the time of each kernel of our forward+backward")
    args = parser.parse_args()
    shapes = [(b, t, h, d, d) for b, t, h, d in (map(int, s.split(",")) for s in args.shapes)] if args.shapes else SHAPES
    warmup, rep = (10, 50) if args.quick else (25, 200)
    impls = implementations()
    if args.profile:
        profile(*shapes[0])
    ceiling = ceilings()
    print(f"ceilings: copy {ceiling['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {ceiling['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    result = {
        "benchmark": "delta_rule_gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "versions": {
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "fla": _fla_version(),
        },
        "dtype": "bfloat16", "chunk_size": C, "timing": f"triton.testing.do_bench median, warmup {warmup} ms, rep {rep} ms",
        "ceilings": ceiling,
        "roofline": {str(s): roofline(*s, ceiling) for s in shapes},
        "decode": decode_times(),  # before the rows: fla's first backward may autotune for minutes
        "rows": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"delta_rule_gpu_{device_name().replace(' ', '_')}_{result['date'][:10]}.json"
    for B, T, H, K, V in shapes:
        torch.manual_seed(0)
        scale = K**-0.5
        q, v = (torch.randn(B, T, H, d, device=DEVICE, dtype=torch.bfloat16) for d in (K, V))
        k = F.normalize(torch.randn(B, T, H, K, device=DEVICE), dim=-1).to(torch.bfloat16)
        beta = torch.sigmoid(torch.randn(B, T, H, device=DEVICE)).to(torch.bfloat16)
        do = torch.randn(B, T, H, V, device=DEVICE, dtype=torch.bfloat16)
        for gate in ("scalar", "none"):
            g = F.logsigmoid(torch.randn(B, T, H, device=DEVICE) + 3) if gate == "scalar" else None
            inputs = dict(q=q, k=k, v=v, beta=beta, g=g)
            ref_leaves = {n: x.float().requires_grad_() for n, x in inputs.items() if x is not None}
            ref_o = impls["torch_chunk"](**{**inputs, **ref_leaves}, scale=scale)
            ref_grads = torch.autograd.grad(ref_o, list(ref_leaves.values()), do.float())
            reference = {"o": ref_o.detach(), **{f"d{n}": gr for n, gr in zip(ref_leaves, ref_grads)}}
            del ref_o, ref_grads, ref_leaves
            # SDPA once per shape; fla last, as its first backward may autotune for minutes
            runs = {n: f for n, f in impls.items() if n != "fla"} | ({"sdpa_causal": sdpa} if gate == "scalar" else {})
            runs |= {n: f for n, f in impls.items() if n == "fla"}
            for name, fn in runs.items():
                row = {"shape": dict(B=B, T=T, H=H, K=K, V=V), "gate": gate, "impl": name}
                row["errors_vs_float32_chunk"] = {} if name == "sdpa_causal" else accuracy(fn, inputs, do, scale, reference)
                leaves = {n: x if x is None else x.detach().requires_grad_() for n, x in inputs.items()}
                torch.cuda.reset_peak_memory_stats()
                base_memory = torch.cuda.memory_allocated()
                row.update(bench_one(fn, leaves, do, scale, warmup, rep))
                row["peak_memory_above_inputs_bytes"] = torch.cuda.max_memory_allocated() - base_memory
                result["rows"].append(row)
                path.write_text(json.dumps(result, indent=1))  # a run cut short keeps what it measured
                torch.cuda.empty_cache()
                errors = {n: float(f"{e:.1e}") if isinstance(e, float) else e for n, e in row["errors_vs_float32_chunk"].items()}
                print(f"{(B, T, H, K, V)} {gate:<6} {name:<12} fwd {row.get('fwd_ms', float('nan')):.3f} ms, "
                      f"fwd+bwd {row.get('fwdbwd_ms', float('nan')):.3f} ms, peak {row['peak_memory_above_inputs_bytes'] / 2**30:.2f} GiB, "
                      f"errors {errors} {row.get('fwdbwd_error', '')}", flush=True)
            del reference
            torch.cuda.empty_cache()
    print_table(result)
    print(f"decode step (B = 1, H = 16, K = V = 128, bf16), microseconds per layer: {result['decode']}")
    print(f"wrote {path}")


def decode_times() -> dict:
    """Median time of one decode step (kernels.common.step) per layer at batch 1: launched eagerly, and
    replayed from a CUDA graph of 100 steps (divided by 100), for both ops."""
    from kernels.common.step import recurrent_step

    out = {}
    for op in ("linear_recurrence", "delta_rule"):
        try:
            q, k, v = (torch.randn(1, 1, 16, 128, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
            g = F.logsigmoid(torch.randn(1, 1, 16, device=DEVICE) + 3)
            beta = torch.rand(1, 1, 16, device=DEVICE) if op == "delta_rule" else None
            state = torch.zeros(1, 16, 128, 128, device=DEVICE)
            o = torch.empty_like(v)

            def step():
                recurrent_step(q, k, v, g, state, beta=beta, out=o)

            step()
            out[f"{op}_eager_us"] = 1e3 * do_bench(step, warmup=25, rep=100, return_mode="median")
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(100):
                    step()
            out[f"{op}_cuda_graph_us"] = 1e3 * do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / 100
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            out[f"{op}_error"] = repr(error)[:300]
    return out


def profile(B: int, T: int, H: int, K: int, V: int) -> None:
    """CUDA time of each kernel in ten forward+backward passes of ours (gated), after warm-up (and autotuning)."""
    q, k, v = (torch.randn(B, T, H, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for d in (K, K, V))
    beta = torch.rand(B, T, H, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device=DEVICE) + 3).requires_grad_()
    for _ in range(3):
        triton_chunk(q, k, v, beta, g)[0].sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            triton_chunk(q, k, v, beta, g)[0].sum().backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))


if __name__ == "__main__":
    main()
