"""Longest DNA sequence each genomics benchmark model reads in one forward pass on this CPU, under memory and time caps.

    python -m benchmarks.genomics_long_context [--cap-gib 2] [--seconds 30] [--max-length 1048576] [--threads 1]

The models of benchmarks/genomics_tasks.py (about 0.5 M parameters, masked-LM head, batch 1, no gradients) run
one after the other in one subprocess whose address space is limited with setrlimit(RLIMIT_AS) to what it uses
after a warm-up pass plus --cap-gib. For each model the length doubles from 1024 until a pass runs out of memory,
or the model's passes together exceed --seconds (SIGALRM interrupts the pass), or --max-length is reached; the
largest length that completed is reported with the reason it stopped, and for every pass its seconds and its
peak resident memory above the resident memory before it (VmHWM, reset before each pass). Writes benchmarks/results/genomics_long_context.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.genomics_tasks import MODELS, build_model

RESULTS = Path(__file__).parent / "results"
FIRST_LENGTH = 1024


class OutOfTime(Exception):
    pass


def raise_out_of_time(signum: int, frame: object) -> None:
    raise OutOfTime


def address_space_bytes() -> int:
    """This process's virtual memory size (VmSize, Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status (Linux only)")


def memory_mib(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset_peak) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def probe(models: list[str], cap_gib: float, max_length: int, seconds: float) -> None:
    """Child process: one JSON line per pass {model, length, ok, seconds | stopped}."""
    signal.signal(signal.SIGALRM, raise_out_of_time)
    built = {name: build_model(name, head="bases").eval() for name in models}
    with torch.no_grad():
        for model in built.values():
            model(torch.randint(0, 4, (1, 256)))  # thread pools and allocator caches exist before the cap
        limit = address_space_bytes() + int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for name, model in built.items():
            length, started = FIRST_LENGTH, time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                while length <= max_length:
                    tokens = torch.randint(0, 4, (1, length))
                    reset_peak()
                    before, begun = memory_mib("VmRSS"), time.perf_counter()
                    model(tokens)
                    elapsed = round(time.perf_counter() - begun, 2)
                    print(json.dumps({"model": name, "length": length, "ok": True, "seconds": elapsed,
                                      "peak_extra_mib": memory_mib("VmHWM") - before}), flush=True)
                    length *= 2
                stopped = f"reached --max-length {max_length}"
            except OutOfTime:
                stopped = f"time: its passes exceeded {seconds:g} s; the pass at {length} did not finish"
            except (RuntimeError, MemoryError) as error:
                stopped = f"memory at {length}: {str(error).splitlines()[0][:120]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            print(json.dumps({"model": name, "length": length, "ok": False, "stopped": stopped,
                              "total_seconds": round(time.perf_counter() - started, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cap-gib", type=float, default=2.0, help="memory allowed beyond the warmed-up process")
    parser.add_argument("--seconds", type=float, default=30.0, help="time allowed for all passes of one model")
    parser.add_argument("--max-length", type=int, default=2**20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        return probe(args.models, args.cap_gib, args.max_length, args.seconds)
    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.genomics_long_context", "--probe", "--models", *args.models, "--cap-gib",
               str(args.cap_gib), "--seconds", str(args.seconds), "--max-length", str(args.max_length), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows = []
    for name in args.models:
        passes = [line for line in lines if line["model"] == name and line["ok"]]
        ends = [line for line in lines if line["model"] == name and not line["ok"]]
        stopped = ends[0]["stopped"] if ends else f"probe process died (exit {done.returncode}): {done.stderr.strip()[-200:]}"
        rows.append({"model": name, "largest_length": max((p["length"] for p in passes), default=None), "stopped_by": stopped,
                     "passes": [{k: p[k] for k in ("length", "seconds", "peak_extra_mib")} for p in passes]})
        print(f"{name:>15}: {rows[-1]['largest_length']} ({stopped})", flush=True)
    info = {"benchmark": "longest sequence in one forward pass (batch 1, no gradients, masked-LM head, ~0.5 M parameters, "
                         "lengths doubling from 1024)",
            "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s), shared with other jobs",
            "memory_cap": f"RLIMIT_AS = warmed-up address space + {args.cap_gib:g} GiB",
            "time_cap": f"{args.seconds:g} s for all passes of one model", "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "python": platform.python_version(),
            "wall_seconds": round(time.perf_counter() - started), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "genomics_long_context.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
