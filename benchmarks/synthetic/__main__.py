"""Train tiny models of every registered mixer on MQAR, parity, S3 and needle retrieval; print tables, write JSON.

    python -m benchmarks.synthetic [--mixers deltanet,gla] [--experiments parity,s3] [--steps 1500]
                                   [--device cuda] [--workers 12] [--out PATH]

Each (mixer, experiment) trains a 2-block Backbone (d_model 64 unless the experiment sets it; the mixer's
default options) with AdamW on fresh random batches and reports the per-token test accuracy at each test
length of the experiment (see EXPERIMENTS in train.py): MQAR at lengths 64/128/256 (d_model 64) and at
state sizes d_model 32/64 (length 64) and 64/128 (length 256); parity and S3 trained at length 64 and tested at 64 and 256; needle retrieval trained
at 64-256 and tested at 256/1024/4096. Mixer variants take options: `deltanet:allow_neg_eigval=True`.
Chance: 1/64 for mqar, 1/2 for parity, 1/6 for s3, 1/32 for needle. Jobs run in `--workers` processes
(several share one GPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import torch

import core
from benchmarks.synthetic.train import EXPERIMENTS, Settings, parse_variant, run_job

RESULTS = Path(__file__).parents[1] / "results" / "synthetic.json"
SLOW_MIXERS = ("slstm", "titans", "miras", "moneta", "yaad", "memora", "atlas")  # token loops or per-token weights
EXTRA_VARIANTS = ["deltanet:allow_neg_eigval=True", "gated_deltanet:allow_neg_eigval=True", "deltaproduct:n_h=3"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", default=",".join([*core.available_mixers(), *EXTRA_VARIANTS]),
                        help="comma-separated mixer names or variants (name:option=value,option=value)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"from {', '.join(EXPERIMENTS)}")
    for field in dataclasses.fields(Settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    unknown = [e for e in args.experiments.split(",") if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    args.mixers = split_variants(args.mixers)
    for variant in args.mixers:
        name, _ = parse_variant(variant)
        if name not in core.available_mixers():
            parser.error(f"unknown mixer {name!r}; registered: {', '.join(core.available_mixers())}")
    return args


def split_variants(text: str) -> list[str]:
    """"gla,deltanet:allow_neg_eigval=True,head_dim=32" -> ["gla", "deltanet:allow_neg_eigval=True,head_dim=32"]:
    a comma starts a new variant unless what follows it is an option (key=value, no ':' in the key)."""
    variants: list[str] = []
    for piece in text.split(","):
        key, is_option, _ = piece.partition("=")
        if variants and is_option and ":" not in key and ":" in variants[-1]:
            variants[-1] += "," + piece
        else:
            variants.append(piece)
    return variants


def cell(row: dict[str, object]) -> str:
    if "error" in row:
        return "error"
    accuracies = [f"{value:.2f}" for key, value in row.items() if key.startswith("acc_")]
    return " / ".join(accuracies)


def markdown(rows: list[dict[str, object]], experiments: list[str]) -> str:
    heads = [f"{e} ({', '.join(map(str, EXPERIMENTS[e].test_lengths))})" for e in experiments]
    lines = ["| mixer | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(experiments)]
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        found = {r["experiment"]: r for r in rows if r["mixer"] == mixer}
        lines.append(f"| {mixer} | " + " | ".join(cell(found[e]) if e in found else "-" for e in experiments) + " |")
    return "\n".join(lines)


def write_report(rows: list[dict[str, object]], args: argparse.Namespace, settings: Settings,
                 experiments: list[str], pending: int) -> str:
    """Write the JSON and markdown results of the rows so far (`pending` jobs still running); returns the table."""
    rows = sorted(rows, key=lambda r: (args.mixers.index(r["mixer"]), experiments.index(r["experiment"])))
    table = markdown(rows, experiments)
    device = torch.cuda.get_device_name() if settings.device.startswith("cuda") else platform.processor() or "cpu"
    report = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__, device=device,
        cpu_count=os.cpu_count(), workers=args.workers, settings=dataclasses.asdict(settings), pending_jobs=pending,
        experiments={e: dataclasses.asdict(EXPERIMENTS[e]) for e in experiments}, results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    status = f", {pending} jobs not finished" if pending else ""
    args.out.with_suffix(".md").write_text(f"{device}, {report['date']}, torch {torch.__version__}{status}\n\n"
                                           f"{dataclasses.asdict(settings)}\n\n{table}\n")
    return table


def main() -> None:
    args = parse_args()
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    experiments = args.experiments.split(",")
    # the slowest jobs first, so that the short ones fill the end: long sequences, then token-loop mixers
    slow_first = sorted(experiments, key=lambda e: -max(EXPERIMENTS[e].train_lengths))
    jobs = [(variant, experiment) for experiment in slow_first
            for variant in sorted(args.mixers, key=lambda v: not v.startswith(SLOW_MIXERS))]
    rows = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = [pool.submit(run_job, variant, experiment, settings) for variant, experiment in jobs]
        for future in as_completed(futures):
            row = future.result()
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            rows.append(row)
            table = write_report(rows, args, settings, experiments, pending=len(jobs) - len(rows))  # kept if stopped
    print(f"\n{dataclasses.asdict(settings)}\n\n{table}\n\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
