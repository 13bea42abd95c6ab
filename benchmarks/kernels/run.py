"""The command line: parse, plan, measure every (op, shape, impl), write JSON and markdown after each row, resume."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import benchmarks.kernels
from benchmarks.kernels.shapes import CHUNK, DEFAULT_SHAPES, IMPLS, OPS, SHAPE_SETS, Shape, UNFINISHED, impls_for, parse_names, parse_shapes
from benchmarks.kernels.roofline import roofline_model
from benchmarks.kernels.budget import message, time_limit
from benchmarks.kernels import impls, measure as measuring  # module attributes: the CPU test fakes the GPU-only ones
from benchmarks.kernels.impls import reference
from benchmarks.kernels.measure import measure, profile
from kernels.common.config import autotuning
from benchmarks.kernels.report import AUTOTUNED_CONFIGS, DEFAULT_CONFIGS, _fmt_errors, _fmt_ms, _fmt_peak, markdown, targets


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
                                           cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except Exception:  # noqa: BLE001
        out["git_commit"] = None
    return out, problem


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=benchmarks.kernels.__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape (B8_T4096_H16_D128) and shorter timing runs")
    parser.add_argument("--ops", nargs="+", default=list(OPS), help=f"among {', '.join(OPS)} (default: all)")
    parser.add_argument("--shapes", nargs="+", help=f"B<b>_T<t>_H<h>_D<d> names or sets {', '.join(SHAPE_SETS)} (default: 32k fla)")
    parser.add_argument("--impls", nargs="+", default=["ours", "sdpa", "sdpa_flash", "fla"], help=f"among {', '.join(IMPLS)} (default: ours sdpa sdpa_flash fla)")
    parser.add_argument("--torch-chunk", action="store_true", help="also time our PyTorch chunk form in bf16 (slow)")
    parser.add_argument("--max-seconds-per-impl", type=float, default=240.0,
                        help="budget of one (op, shape, impl) measurement, first call (autotuning) included (default 240)")
    parser.add_argument("--max-seconds", type=float, default=None, help="budget of the whole run (default: none)")
    parser.add_argument("--profile", action="store_true", help="also print and record the time of each kernel (forward + backward) per op, of ours and fla where asked for, at the first shape")
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
            "python -m benchmarks.kernels times CUDA kernels and needs a CUDA GPU; torch.cuda.is_available() is False here "
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
        "configs": AUTOTUNED_CONFIGS if autotuning() else DEFAULT_CONFIGS,
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
    result["ceilings"] = measuring.ceilings()
    c = result["ceilings"]
    print(f"{device}; ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {c['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    if "decode" in args.ops and result["decode"] is None:
        result["decode"] = measuring.decode_times(budget())
        print(f"decode: {result['decode']}", flush=True)
    if args.profile:
        result["profiles"] = {}
        for op in args.ops:
            for impl in (i for i in impls_for(op, args.impls) if i in ("ours", "fla")):
                result["profiles"].setdefault(op, {})[impl] = table = profile(op, impl, args.shapes[0], budget())
                print(f"profile of {impl}, {op} {args.shapes[0].name}, ten forward + backward passes:\n{table}", flush=True)
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
            inputs = impls.make_inputs(op, shape)
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
    result["autotuned"] = measuring.chosen_configs()
    save()
    for kernel, chosen in result["autotuned"].items():
        print(f"autotuned {kernel}: " + "; ".join(f"{c['num_warps']} warps, {c['num_stages']} stages{' (default)' if c['default'] else ''}"
                                               for c in chosen), flush=True)
    print("\n" + markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md')} in {time.monotonic() - start:.0f} s")
    return result
