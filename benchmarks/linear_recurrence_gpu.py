"""Time the Triton linear recurrence against the chunked PyTorch form (and fla's chunk_simple_gla if importable).

    PYTHONPATH=. python benchmarks/linear_recurrence_gpu.py [--out DIR] [--quick]

For each shape and gate (scalar decay per head, or none): forward and forward+backward, median of
triton.testing.do_bench after warm-up runs (so compilation and autotuning are excluded), with the
relative RMS error of the output and the gradients against the chunk form on float32 upcasts checked
in the same run. Also measures the two ceilings (copy bandwidth, bf16 matmul rate) and prints the
roofline floor of each shape. Prints a table; writes JSON (device, versions, date) to DIR
(default benchmarks/results/).
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

from core.ops.linear_recurrence.chunk import chunk_linear_recurrence as torch_chunk
from kernels.linear_recurrence import chunk_linear_recurrence as triton_chunk

SHAPES = [  # (B, T, H, K, V)
    (8, 4096, 16, 128, 128),
    (1, 32768, 16, 128, 128),  # the same tokens x heads in one long sequence: the sequential state pass shows
]
C = 64
DEVICE = "cuda"  # a smoke test on CPU sets "cpu" (with TRITON_INTERPRET=1) and patches do_bench


def fla_fn():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as error:  # noqa: BLE001 - any import failure means "skip fla"
        print(f"fla not importable, skipped: {error!r}")
        return None
    return chunk_simple_gla


def implementations(fla) -> dict:
    def ours(q, k, v, g, scale):
        return triton_chunk(q, k, v, g, scale=scale)[0]

    def chunk(q, k, v, g, scale):
        g = torch.zeros(q.shape[:3], device=q.device) if g is None else g
        return torch_chunk(q, k, v, g, scale, None, False)[0]

    impls = {"triton": ours, "torch_chunk": chunk}
    if fla is not None:
        impls["fla_chunk_simple_gla"] = lambda q, k, v, g, scale: fla(q, k, v, g=g, scale=scale)[0]
    return impls


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def ceilings() -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    x = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    bandwidth = 2 * x.numel() / (ms * 1e-3)
    a, b = (torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return {"copy_bytes_per_s": bandwidth, "bf16_matmul_flops_per_s": 2 * 8192**3 / (ms * 1e-3)}


def roofline(B: int, T: int, H: int, K: int, V: int, ceiling: dict) -> dict:
    """Floors of forward and forward+backward: bytes each kernel must move vs matmul FLOPs (bf16 inputs)."""
    chunks = B * H * triton.cdiv(T, C)
    e = 2  # bytes per bf16 element
    qkv, o, g = B * T * H * (2 * K + V) * e, B * T * H * V * e, B * T * H * 4
    h = chunks * K * V * e  # per-chunk states, written then read
    fwd_min = qkv + o + g
    fwd_impl = fwd_min + 2 * h
    bwd_min = qkv + o + g + qkv + g  # read q, k, v, do, g; write dq, dk, dv, dg
    bwd_impl = bwd_min + 3 * h + 2 * h + 3 * qkv  # h again (write + read), dh (write + 2 reads), q, k, v, do re-read
    ckv, cck, ccv = 2 * C * K * V, 2 * C * C * K, 2 * C * C * V
    fwd_flops = chunks * (2 * ckv + cck + ccv)  # state update, Q h, Q K^T, A V
    bwd_flops = chunks * (5 * ckv + 4 * cck + 3 * ccv)  # h again, dh, K dh, dO h^T, V dh^T; K Q^T, Q K^T, dA K, dA^T Q; A^T dO, dA, dA^T
    bw, rate = ceiling["copy_bytes_per_s"], ceiling["bf16_matmul_flops_per_s"]
    return {
        "fwd_bytes_min": fwd_min, "fwd_bytes_impl": fwd_impl, "fwd_flops": fwd_flops,
        "fwdbwd_bytes_min": fwd_min + bwd_min, "fwdbwd_bytes_impl": fwd_impl + bwd_impl, "fwdbwd_flops": fwd_flops + bwd_flops,
        "fwd_floor_ms": 1e3 * max(fwd_min / bw, fwd_flops / rate),
        "fwd_impl_floor_ms": 1e3 * max(fwd_impl / bw, fwd_flops / rate),
        "fwdbwd_floor_ms": 1e3 * max((fwd_min + bwd_min) / bw, (fwd_flops + bwd_flops) / rate),
        "fwdbwd_impl_floor_ms": 1e3 * max((fwd_impl + bwd_impl) / bw, (fwd_flops + bwd_flops) / rate),
    }


def bench_one(fn, inputs: dict, do: torch.Tensor, scale: float, warmup: int, rep: int) -> dict:
    leaves = [x for x in inputs.values() if x is not None]

    def fwd():
        with torch.no_grad():
            return fn(**inputs, scale=scale)

    def fwdbwd():
        fn(**inputs, scale=scale).backward(do)

    out = {}
    try:
        for _ in range(3):  # compile and autotune outside the timed region
            fwd()
        out["fwd_ms"] = do_bench(fwd, warmup=warmup, rep=rep, return_mode="median")
    except Exception as error:  # noqa: BLE001 - a refusing implementation is reported, not fatal
        out["fwd_error"] = repr(error)[:300]
    try:
        for _ in range(3):
            fwdbwd()
        out["fwdbwd_ms"] = do_bench(fwdbwd, warmup=warmup, rep=rep, grad_to_none=leaves, return_mode="median")
    except Exception as error:  # noqa: BLE001
        out["fwdbwd_error"] = repr(error)[:300]
    for x in leaves:
        x.grad = None
    return out


def accuracy(fn, inputs: dict, do: torch.Tensor, scale: float, reference: dict) -> dict:
    leaves = {n: x.detach().clone().requires_grad_() for n, x in inputs.items() if x is not None}
    errors = {}
    try:
        o = fn(**{**inputs, **leaves}, scale=scale)
        errors["o"] = rel_rms(o, reference["o"])
        grads = torch.autograd.grad(o, list(leaves.values()), do)
        errors.update({f"d{n}": rel_rms(gr, reference[f"d{n}"]) for n, gr in zip(leaves, grads)})
    except Exception as error:  # noqa: BLE001
        errors["error"] = repr(error)[:300]
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = parser.parse_args()
    warmup, rep = (10, 50) if args.quick else (25, 200)
    fla = fla_fn()
    impls = implementations(fla)
    ceiling = ceilings()
    print(f"ceilings: copy {ceiling['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {ceiling['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    result = {
        "benchmark": "linear_recurrence_gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "versions": {
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "fla": _fla_version(),
        },
        "dtype": "bfloat16", "chunk_size": C, "timing": f"triton.testing.do_bench median, warmup {warmup} ms, rep {rep} ms",
        "ceilings": ceiling,
        "roofline": {str(s): roofline(*s, ceiling) for s in SHAPES},
        "rows": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"linear_recurrence_gpu_{device_name().replace(' ', '_')}_{result['date'][:10]}.json"
    # ours and the PyTorch form on every shape first, fla last: its first backward autotunes for minutes
    groups = [[n for n in impls if n != "fla_chunk_simple_gla"], [n for n in impls if n == "fla_chunk_simple_gla"]]
    for group in filter(None, groups):
        for B, T, H, K, V in SHAPES:
            torch.manual_seed(0)
            scale = K**-0.5
            q, k, v = (torch.randn(B, T, H, d, device=DEVICE, dtype=torch.bfloat16) for d in (K, K, V))
            do = torch.randn(B, T, H, V, device=DEVICE, dtype=torch.bfloat16)
            for gate in ("scalar", "none"):
                g = F.logsigmoid(torch.randn(B, T, H, device=DEVICE) + 3) if gate == "scalar" else None
                inputs = dict(q=q, k=k, v=v, g=g)
                ref_leaves = {n: x.float().requires_grad_() for n, x in inputs.items() if x is not None}
                ref_o = impls["torch_chunk"](**{**inputs, **ref_leaves}, scale=scale)
                ref_grads = torch.autograd.grad(ref_o, list(ref_leaves.values()), do.float())
                reference = {"o": ref_o.detach(), **{f"d{n}": gr for n, gr in zip(ref_leaves, ref_grads)}}
                del ref_o, ref_grads, ref_leaves
                for name in group:
                    fn = impls[name]
                    row = {"shape": dict(B=B, T=T, H=H, K=K, V=V), "gate": gate, "impl": name}
                    row["errors_vs_float32_chunk"] = accuracy(fn, inputs, do, scale, reference)
                    leaves = {n: x if x is None else x.detach().requires_grad_() for n, x in inputs.items()}
                    row.update(bench_one(fn, leaves, do, scale, warmup, rep))
                    result["rows"].append(row)
                    path.write_text(json.dumps(result, indent=1))  # a run cut short keeps what it measured
                    torch.cuda.empty_cache()
                    errors = {n: float(f"{e:.1e}") if isinstance(e, float) else e for n, e in row["errors_vs_float32_chunk"].items()}
                    print(f"{(B, T, H, K, V)} {gate:<6} {name:<22} fwd {row.get('fwd_ms', float('nan')):.3f} ms, "
                          f"fwd+bwd {row.get('fwdbwd_ms', float('nan')):.3f} ms, errors {errors}", flush=True)
                del reference
                torch.cuda.empty_cache()
    print_table(result)
    print(f"wrote {path}")


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE


def _fla_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("fla-core")
    except Exception:  # noqa: BLE001
        return None


def print_table(result: dict) -> None:
    print(f"\n{result['device']}, torch {result['versions']['torch']}, triton {result['versions']['triton']}, bf16, {result['timing']}")
    header = f"{'shape (B,T,H,K,V)':<24}{'gate':<8}{'impl':<22}{'fwd ms':>9}{'fwd+bwd ms':>12}{'fwd x':>8}{'f+b x':>8}  max rel err (o, grads)"
    print(header)
    print("-" * len(header))
    by_key = {}
    for row in result["rows"]:
        s = row["shape"]
        key = (f"({s['B']},{s['T']},{s['H']},{s['K']},{s['V']})", row["gate"])
        by_key.setdefault(key, {})[row["impl"]] = row
    for (shape, gate), impls in by_key.items():
        base = impls.get("torch_chunk", {})
        for name, row in impls.items():
            f, fb = row.get("fwd_ms"), row.get("fwdbwd_ms")
            sf = f"{base['fwd_ms'] / f:.1f}" if f and base.get("fwd_ms") else "-"
            sfb = f"{base['fwdbwd_ms'] / fb:.1f}" if fb and base.get("fwdbwd_ms") else "-"
            errs = row["errors_vs_float32_chunk"]
            err = "error" if "error" in errs else "-" if not errs else f"{errs.get('o', 0):.1e}, {max((v for n, v in errs.items() if n != 'o'), default=0):.1e}"
            fs = f"{f:.3f}" if f else "fail"
            fbs = f"{fb:.3f}" if fb else "fail"
            print(f"{shape:<24}{gate:<8}{name:<22}{fs:>9}{fbs:>12}{sf:>8}{sfb:>8}  {err}")
    for shape, r in result["roofline"].items():
        print(
            f"roofline {shape}: fwd floor {r['fwd_floor_ms']:.3f} ms ({r['fwd_impl_floor_ms']:.3f} with h in memory), "
            f"fwd+bwd floor {r['fwdbwd_floor_ms']:.3f} ms ({r['fwdbwd_impl_floor_ms']:.3f} as scheduled); "
            f"{r['fwd_flops'] / 1e9:.0f} + {(r['fwdbwd_flops'] - r['fwd_flops']) / 1e9:.0f} GFLOP"
        )


if __name__ == "__main__":
    main()
