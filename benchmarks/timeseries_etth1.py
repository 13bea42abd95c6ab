"""ETTh1 forecasting benchmark through the timeseries app: lookback 96, horizons 96/192/336/720.

    python -m benchmarks.timeseries_etth1 [--models attention gla mamba2 rlinear] [--parallel 4] [-- overrides...]
    python -m benchmarks.timeseries_etth1 --horizons 96 --out timeseries_etth1_cpu_epoch -- trainer.max_epochs=1


Each model is one Hydra multirun over the four horizons (`experiment=etth1`), the models run in parallel
processes; then every metrics.json is collected into a table of test MSE/MAE per horizon and their
average (standardised scale, the TSLib convention), with seconds per training epoch. Prints the table
and writes benchmarks/results/<out>.{json,md} with device, versions and date (the second command above
only times one epoch per model).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from apps.common.cli import QUIET
from apps.common.results import load_runs
from benchmarks.parallel import run_parallel

MODELS = {
    "attention": ["model/mixer=attention"],
    "gla": ["model/mixer=gla"],
    "mamba2": ["model/mixer=mamba2"],
    "rlinear": ["model=rlinear"],
    "dlinear": ["model=dlinear"],
}
HORIZONS = (96, 192, 336, 720)
PUBLISHED = {"iTransformer": (0.454, 0.447), "RLinear": (0.446, 0.434), "PatchTST": (0.469, 0.454)}
RESULTS = Path(__file__).parent / "results"


def command(model: str, runs_dir: Path, horizons: list[int], overrides: list[str]) -> list[str]:
    horizons = ",".join(map(str, horizons))
    return [sys.executable, "-m", "apps.timeseries", "train", "-m", "experiment=etth1", f"data.horizon={horizons}",
            f"name=etth1_{model}", f"paths.runs={runs_dir}", *MODELS[model], *QUIET, *overrides]


def table(runs_dir: Path, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        settings, metrics = load_runs([runs_dir / "timeseries" / f"etth1_{model}"])
        frame = settings.assign(**metrics).assign(horizon=settings["data.horizon"].astype(int)).sort_values("horizon")
        row = {"model": model}
        for _, run in frame.iterrows():
            row[f"mse_{run.horizon}"], row[f"mae_{run.horizon}"] = run["test/mse"], run["test/mae"]
        row["mse_avg"], row["mae_avg"] = frame["test/mse"].mean(), frame["test/mae"].mean()
        rows.append(row)
    return rows


def markdown(rows: list[dict], seconds: dict[str, float], horizons: list[int]) -> str:
    head = "| model | " + " | ".join(f"{h} MSE / MAE" for h in horizons) + " | avg MSE / MAE | s / epoch |"
    lines = [head, "|" + "---|" * (len(horizons) + 3)]
    for row in rows:
        cells = [f"{row[f'mse_{h}']:.3f} / {row[f'mae_{h}']:.3f}" for h in horizons]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | **{row['mse_avg']:.3f} / {row['mae_avg']:.3f}** | {seconds[row['model']]:.1f} |")
    for name, (mse, mae) in PUBLISHED.items():
        lines.append(f"| {name} (published) | " + " | ".join("" for _ in horizons) + f" | {mse:.3f} / {mae:.3f} | |")
    return "\n".join(lines)


def epoch_seconds(runs_dir: Path, model: str) -> float:
    records = [json.loads(p.read_text()) for p in (runs_dir / "timeseries" / f"etth1_{model}").rglob("metrics.json")]
    return sum(r["seconds_per_epoch"] for r in records) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["attention", "gla", "mamba2", "rlinear"], choices=list(MODELS))
    parser.add_argument("--parallel", type=int, default=4, help="models trained at the same time")
    parser.add_argument("--horizons", nargs="+", type=int, default=list(HORIZONS))
    parser.add_argument("--out", default="timeseries_etth1", help="file stem of the results under benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer=gpu")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_parallel({model: command(model, args.runs_dir, args.horizons, args.overrides) for model in args.models},
                 args.runs_dir, args.parallel)
    rows = table(args.runs_dir, args.models)
    seconds = {model: epoch_seconds(args.runs_dir, model) for model in args.models}
    text = markdown(rows, seconds, args.horizons)
    print(text)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    info = {"benchmark": "ETTh1, lookback 96, test MSE/MAE on the standardised scale", "device": device,
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "overrides": args.overrides,
            "wall_seconds": round(time.perf_counter() - started), "seconds_per_epoch": seconds, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    (RESULTS / f"{args.out}.md").write_text(f"{info['benchmark']}; {device}; torch {torch.__version__}; {info['date']}\n\n{text}\n")


if __name__ == "__main__":
    main()
