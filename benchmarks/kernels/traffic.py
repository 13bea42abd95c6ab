"""DRAM traffic, time and occupancy of each kernel of one forward + backward, read by Nsight Compute on a GPU.

    python -m benchmarks.kernels.traffic [--op gated_delta] [--shape B16_T2048_H16_D128] [--impl ours] [--out DIR]

Runs `ncu` on a child process that warms the op up (three forward + backward passes: compilation and autotuning) and
then runs one more between cudaProfilerStart and cudaProfilerStop, so that only that pass is profiled. ncu leaves the
clocks alone (`--clock-control none`). Prints, per kernel launch: the DRAM bytes read and written, the time under the
profiler, the rate, the L2 hit rate, registers per thread, programs per multiprocessor (the register limit), achieved
occupancy and waves; writes DIR/kernel_traffic_<op>_<shape>.{csv,md} (DIR default benchmarks/results). Our kernels
autotune in the warm-up unless SEQMIX_TRITON_AUTOTUNE=0 (then each runs its default config, as the benchmarks time).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.kernels.report import save_table
from benchmarks.kernels.shapes import parse_shape

RESULTS = Path(__file__).resolve().parents[1] / "results"
METRICS = {  # ncu metric: column
    "dram__bytes_read.sum": "read MB",
    "dram__bytes_write.sum": "written MB",
    "gpu__time_duration.sum": "µs",
    "lts__t_sector_hit_rate.pct": "L2 hit %",
    "launch__registers_per_thread": "registers",
    "launch__occupancy_limit_registers": "programs / SM (registers)",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy %",
    "launch__waves_per_multiprocessor": "waves",
}


def one_pass(op: str, shape: str, impl: str) -> None:
    """Three warm-up forward + backward passes, then one between cudaProfilerStart and cudaProfilerStop."""
    from benchmarks.kernels.measure import forward_backward_pass

    forward_backward = forward_backward_pass(op, impl, parse_shape(shape))
    for _ in range(3):
        forward_backward()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    forward_backward()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def read_ncu(text: str) -> list[dict]:
    """ncu's --csv output (one row per launch and metric) as one row per launch: kernel and METRICS' columns."""
    launches: dict[str, dict] = {}
    for r in csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if line.startswith('"')))):
        row = launches.setdefault(r["ID"], {"kernel": r["Kernel Name"].split("(")[0].split("<")[0].strip()})
        if r["Metric Name"] in METRICS:
            row[METRICS[r["Metric Name"]]] = float(r["Metric Value"].replace(",", ""))
    rows = list(launches.values())
    for row in rows:
        row["read MB"] /= 1e6
        row["written MB"] /= 1e6
        row["µs"] /= 1e3
        row["TB/s"] = (row["read MB"] + row["written MB"]) / row["µs"]  # MB per µs
    return rows


def markdown(rows: list[dict], header: str) -> str:
    columns = ["kernel", "read MB", "written MB", "µs", "TB/s", *[c for c in METRICS.values() if c not in ("read MB", "written MB", "µs")]]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) if c == "kernel" else f"{row[c]:,.2f}".rstrip("0").rstrip(".") for c in columns) + " |")
    total_bytes = sum(r["read MB"] + r["written MB"] for r in rows)
    total_us = sum(r["µs"] for r in rows)
    lines += ["", f"All launches: {total_bytes / 1e3:.2f} GB in {total_us:,.0f} µs, {total_bytes / total_us:.2f} TB/s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", default="gated_delta")
    parser.add_argument("--shape", default="B16_T2048_H16_D128")
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the profiled process
    args = parser.parse_args(argv)
    if args.child:
        one_pass(args.op, args.shape, args.impl)
        return []
    if not torch.cuda.is_available() or shutil.which("ncu") is None:
        raise SystemExit("benchmarks.kernels.traffic needs a CUDA GPU and Nsight Compute's `ncu` on the PATH")
    child = [sys.executable, "-m", "benchmarks.kernels.traffic", "--child", "--op", args.op, "--shape", args.shape, "--impl", args.impl]
    command = ["ncu", "--clock-control", "none", "--profile-from-start", "off", "--csv", "--metrics", ",".join(METRICS), *child]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = read_ncu(text)
    header = (f"Nsight Compute, {torch.cuda.get_device_name()}, torch {torch.__version__}: one forward + backward of {args.impl} "
              f"{args.op} at {args.shape}, bf16, after three warm-up passes; {datetime.date.today()}")
    save_table(args.out, f"kernel_traffic_{args.op}_{args.shape}", markdown(rows, header), ".csv", text)
    return rows


if __name__ == "__main__":
    main()
