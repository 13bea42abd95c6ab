"""Fashion-MNIST benchmark through the vision app: five models of about 1-2 M parameters, one recipe.

    python -m benchmarks.vision_fashion_mnist -- trainer=gpu                        # the benchmark (one GPU)
    python -m benchmarks.vision_fashion_mnist --out vision_fashion_mnist_cpu_smoke -- \
        trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1

Models (`experiment=fashion_mnist`, apps/vision/conf/experiment): ViT, Vision Mamba (bidirectional Mamba-2),
Vision-LSTM (mLSTM, alternating scan), Gated DeltaNet (bidirectional) and the gated-CNN control (MambaOut,
no sequence mixer). Each model trains in its own process, all at the same time on the one device; then
every metrics.json is collected into a table of test top-1/top-5 accuracy, parameters, epochs, training
time and throughput. Prints the table and writes benchmarks/results/<out>.{json,md} with device, versions
and date. trainer.max_time (default 6.5 minutes per model) stops a model that runs slower than planned,
so the whole benchmark ends in about 8 minutes; the table then shows fewer epochs than 25.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import apps.vision  # noqa: F401  (registers the timm models that the saved configs name)
from apps.common.cli import QUIET
from benchmarks.parallel import run_parallel

MODELS = {"vit": "ViT", "vim": "Vision Mamba (bidirectional Mamba-2)", "vil": "Vision-LSTM (mLSTM, alternating)",
          "gdn": "Gated DeltaNet (bidirectional)", "gated_cnn": "gated CNN control (MambaOut, no sequence mixer)"}
CONTROL = "gated_cnn"
TARGET = 0.93
RESULTS = Path(__file__).parent / "results"


def command(model: str, runs_dir: Path, max_time: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "apps.vision", "train", "experiment=fashion_mnist", f"model={model}",
            f"name=fashion_mnist_{model}", f"paths.runs={runs_dir}", f"trainer.max_time={max_time}",
            *QUIET, *overrides]


def parameters(run_dir: Path) -> int:
    """Parameter count of the run's model, rebuilt from its saved config (Fashion-MNIST: 10 classes, 1x28x28)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    model = instantiate(cfg.model, num_classes=10, in_chans=1, img_size=(28, 28), _convert_="all")
    return sum(p.numel() for p in model.parameters())


def row(runs_dir: Path, model: str) -> dict:
    # the newest run of this model (a runs directory may hold earlier ones)
    path = max((runs_dir / "vision" / f"fashion_mnist_{model}").rglob("metrics.json"), key=lambda p: p.stat().st_mtime)
    record, run_dir = json.loads(path.read_text()), path.parent
    log = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return {
        "model": model, "description": MODELS[model], "parameters": parameters(run_dir),
        "top1": record["metrics"]["test/top1"], "top5": record["metrics"]["test/top5"],
        "epochs": record["epochs"], "seconds_per_epoch": record["seconds_per_epoch"],
        "train_images_per_second": float(log["train/images_per_second"].dropna().median()),
        "peak_memory_mb": float(log["train/peak_memory_mb"].dropna().max()), "run_seconds": record["seconds"],
        "run_dir": str(run_dir),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | test top-1 | test top-5 | epochs | s / epoch | train images/s | peak MiB | run s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['description']} | {r['parameters'] / 1e6:.2f} M | **{100 * r['top1']:.2f}%** | {100 * r['top5']:.2f}% | "
            f"{r['epochs']} | {r['seconds_per_epoch']:.1f} | {r['train_images_per_second']:.0f} | {r['peak_memory_mb']:.0f} | {r['run_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n\n" + verdict(rows)


def verdict(rows: list[dict]) -> str:
    """Whether the best sequence mixer reaches the target and whether it beats the gated-CNN control."""
    mixers = [r for r in rows if r["model"] != CONTROL]
    if not mixers:
        return ""
    best = max(mixers, key=lambda r: r["top1"])
    text = f"Best sequence mixer: {best['description']}, {100 * best['top1']:.2f}% test top-1 "
    text += f"({'meets' if best['top1'] >= TARGET else 'misses'} the {100 * TARGET:.0f}% target)."
    control = next((r for r in rows if r["model"] == CONTROL), None)
    if control is not None:
        gap = 100 * (best["top1"] - control["top1"])
        text += f" The gated-CNN control reaches {100 * control['top1']:.2f}%: the best sequence mixer "
        text += f"{'beats' if gap > 0 else 'does not beat'} it ({gap:+.2f} points, one seed)."
    return text


def versions() -> dict[str, str]:
    names = ["torch", "timm", "lightning", "triton"]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a package that is not installed has no version
            found[name] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--parallel", type=int, default=len(MODELS), help="models trained at the same time")
    parser.add_argument("--max-time", default="00:00:06:30", help="trainer.max_time of every model (DD:HH:MM:SS)")
    parser.add_argument("--out", default="vision_fashion_mnist", help="file stem of the results under benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer=gpu")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # the models share the machine's cores: a few CPU threads each (their work is on the GPU)
    failed = run_parallel({model: command(model, args.runs_dir, args.max_time, args.overrides) for model in args.models},
                          args.runs_dir, args.parallel, threads=3, keep_going=True)
    rows = [row(args.runs_dir, model) for model in args.models if model not in failed]
    text = markdown(rows) + "".join(f"\n{MODELS[m]}: failed, see {args.runs_dir / (m + '.log')}" for m in failed)
    print(text)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    info = {"benchmark": "Fashion-MNIST test accuracy, experiment=fashion_mnist (one recipe for every model)",
            "device": device, "date": datetime.date.today().isoformat(), "versions": versions(),
            "overrides": args.overrides, "max_time": args.max_time, "parallel": args.parallel, "failed": failed,
            "wall_seconds": round(time.perf_counter() - started), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(info, indent=2) + "\n")
    header = f"{info['benchmark']}; {device}; torch {info['versions']['torch']}; {info['date']}; {min(args.parallel, len(args.models))} models at once, {info['wall_seconds']} s wall"
    (RESULTS / f"{args.out}.md").write_text(f"{header}\n\n{text}\n")
    if failed:
        raise SystemExit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
