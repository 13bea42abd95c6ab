"""Train tiny models of every registered mixer on MQAR, parity and S3 on CPU; print a table, write JSON.

    python -m benchmarks.synthetic [--mixers deltanet,gla] [--tasks parity,s3] [--steps 300] [--out PATH]

Each (mixer, task) trains a 2-block Backbone (d_model 64, the mixer's default options) on fresh random
batches and reports the per-token test accuracy at the training length and at twice that length
(length generalisation). Chance: 1/32 for mqar, 1/2 for parity, 1/6 for s3.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

import core
from benchmarks.synthetic.tasks import TASKS
from benchmarks.synthetic.train import Settings, train_and_score

RESULTS = Path(__file__).parents[1] / "results" / "synthetic.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", default=",".join(core.available_mixers()), help="comma-separated mixer names")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    for field in dataclasses.fields(Settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    return args


def markdown(rows: list[dict[str, object]], tasks: list[str]) -> str:
    lines = ["| mixer | " + " | ".join(f"{t} acc (2x len)" for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        cells = []
        for task in tasks:
            r = next(r for r in rows if r["mixer"] == mixer and r["task"] == task)
            cells.append(r["error"] if "error" in r else f"{r['accuracy']:.2f} ({r['accuracy_2x_length']:.2f})")
        lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    mixers, tasks = args.mixers.split(","), args.tasks.split(",")
    rows = []
    for mixer in mixers:
        for task in tasks:
            try:
                row = dict(mixer=mixer, task=task, **train_and_score(mixer, TASKS[task], settings))
            except Exception as error:  # one broken mixer must not hide the others' results
                row = dict(mixer=mixer, task=task, error=f"{type(error).__name__}: {error}"[:80])
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            rows.append(row)
    print(f"\n{dataclasses.asdict(settings)}, {torch.get_num_threads()} threads\n")
    print(markdown(rows, tasks))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        cpu=dict(processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                 torch_threads=torch.get_num_threads()),
        settings=dataclasses.asdict(settings), results=rows,
    )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
