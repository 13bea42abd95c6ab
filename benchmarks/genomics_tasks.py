"""Genomics benchmark through the genomics app: five mixers (six models) at about 0.5 M parameters, the same budget each.

    python -m benchmarks.genomics_tasks [--models attention bimamba2 ...] [--seeds 42 1 2] [--pretrain-steps 2000]
                                        [--finetune-steps 800] [--minutes-per-phase 2.25] [--parallel 10] [-- overrides...]
    # RC-equivariant vs bidirectional Mamba-2 at equal steps (benchmarks/results/genomics_rc_equal_steps.md):
    python -m benchmarks.genomics_tasks --models bimamba2 rc_mamba2 rc_mamba2_concat --seeds 42 1 2 --pretrain-steps 300 \
        --finetune-steps 200 --minutes-per-phase 3.6 --parallel 18 --out genomics_rc_equal_steps

Models: attention, bidirectional Mamba-2, RC-equivariant Mamba-2 (Caduceus-PS) with the strands averaged in the
head (rc_mamba2) or read side by side (rc_mamba2_concat, model.rc_head=concat), Gated DeltaNet, mLSTM.

Phase 1, in parallel processes: masked-language-model pretraining of every model on the train regions of human
chr22 (1 kb windows). Phase 2, in parallel: each pretrained encoder fine-tuned on the four tasks (species of
origin, coding vs non-coding, repeats per base, promoter-proximal vs distal; `finetune` verb), and the pretrained
model tested again on 8 kb windows (`eval data.eval_window=8192`: trained at 1 kb, evaluated at 8 kb).
Every run stops at its step budget or at the phase's time cap (`trainer.max_time`), whichever comes first; the
table says how many steps each run made. Then every metrics.json is collected into a table of test accuracy /
MCC / macro F1 per task and bits per base (masked positions, test regions), printed and written to
benchmarks/results/<out>.{json,md} with device, versions and date; with several --seeds, one row per model and
seed, then the means and standard deviations over the seeds. Defaults (two phases of at most 2.25 minutes
of training each, plus start-up and testing) aim at one H100 with 16 CPU cores in about 8 minutes. Overrides
after `--` replace the default `trainer=gpu trainer.precision=32-true`; on a CPU, e.g.
`--pretrain-steps 20 --finetune-steps 20 --long-window 2048 -- trainer=default`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import lightning
import torch

from apps.common.cli import QUIET
from benchmarks.parallel import run_parallel, step_budget

# the data directory, resolved here so that the table's runs name the files they read
DATA_GENOMICS = Path(os.environ.get("SEQMIX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")) / "genomics"
SHAPE = ["model.depth=4", "model.mlp_expand=2.0"]
MAMBA2 = ["model/mixer=mamba2", "+model.mixer.options.d_state=32", "+model.mixer.options.head_dim=32", "model.d_model=80"]
MODELS = {  # about 0.5 M parameters each (the table lists the exact counts)
    "attention": ["model/mixer=attention", "model.d_model=112"],
    "bimamba2": [*MAMBA2, "model.bidirectional=true"],
    "rc_mamba2": [*MAMBA2, "model.bidirectional=true", "model.rc=shared"],  # Caduceus-PS: same weights as bimamba2
    # the same, with a head that reads both strands (tells them apart: orientation-dependent labels such as promoter)
    "rc_mamba2_concat": [*MAMBA2, "model.bidirectional=true", "model.rc=shared", "model.rc_head=concat"],
    "gated_deltanet": ["model/mixer=gated_deltanet", "model.d_model=76", "model.bidirectional=true"],
    "mlstm": ["model/mixer=mlstm", "model.d_model=80", "model.bidirectional=true"],
}
TASKS = {  # task: its own data overrides
    "species": ["data.window=256"],
    "coding": ["data.window=256"],
    "repeats": ["data.window=512"],
    "promoter": ["data.window=250"],
}
PRETRAIN = ["task=pretrain", f"data.source.fasta={DATA_GENOMICS}/hsap_chr22_grch37_blocks.fa.gz", "data.window=1024",
            "data.test_windows=512"]
RESULTS = Path(__file__).parent / "results"


def budget(steps: int, minutes: float, batches_per_epoch: int) -> list[str]:
    """Trainer overrides for `steps` optimizer steps (validation and checkpoints every `batches_per_epoch`) or
    `minutes`, whichever ends first; no early stopping, so every model gets the same budget."""
    return [*step_budget(steps, minutes, batches_per_epoch), f"data.train_batches={min(steps, batches_per_epoch)}", "~callbacks.early_stopping",
            *QUIET, "data.batch_size=64", "data.val_windows=512"]


def run_all(jobs: dict[str, tuple[str, list[str]]], runs_dir: Path, parallel: int) -> list[str]:
    """Run {label: (verb, overrides)} with at most `parallel` processes at once; returns the labels that failed."""
    commands = {label: [sys.executable, "-m", "apps.genomics", verb, f"paths.runs={runs_dir}",
                        f"hydra.run.dir={runs_dir / label}", *overrides] for label, (verb, overrides) in jobs.items()}
    return run_parallel(commands, runs_dir, parallel, keep_going=True)


def metrics_of(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def steps_of(run_dir: Path) -> int | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=True)["global_step"] if last.is_file() else None


def build_model(model: str, head: str = "sequence") -> torch.nn.Module:
    """The app's DNAModel of benchmark model `model`, composed from the same config and overrides as the runs."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from apps.common.cli import register_mixers, register_resolvers
    from apps.genomics.__main__ import APP

    register_mixers(APP.config_dir)
    register_resolvers()
    with initialize_config_dir(config_dir=str(APP.config_dir), version_base="1.3"):
        cfg = compose("config", overrides=[*SHAPE, *MODELS[model], f"model.head={head}"])
    return instantiate(cfg.model, _convert_="all")


def parameter_count(model: str) -> int:
    return sum(p.numel() for p in build_model(model).parameters())


def label(model: str, seed: int, run: str) -> str:
    """A run's directory name under --runs-dir: model, run ("pretrain", a task, "eval8192") and seed."""
    return f"{model}-{run}-seed{seed}"


def collect(runs_dir: Path, models: list[str], seeds: list[int], long_window: int) -> list[dict]:
    rows = []
    for seed in seeds:
        for model in models:
            run = lambda name: runs_dir / label(model, seed, name)  # noqa: E731
            row = {"model": model, "seed": seed, "parameters": parameter_count(model)}
            row["bits_per_base_1k"] = metrics_of(run("pretrain")).get("metrics", {}).get("test/bits_per_base")
            row["bits_per_base_long"] = metrics_of(run(f"eval{long_window}")).get("metrics", {}).get("test/bits_per_base")
            row["pretrain_steps"] = steps_of(run("pretrain"))
            for task in TASKS:
                metrics = metrics_of(run(task)).get("metrics", {})
                for name in ("accuracy", "mcc", "f1"):
                    row[f"{task}_{name}"] = metrics.get(f"test/{name}")
                row[f"{task}_steps"] = steps_of(run(task))
            rows.append(row)
    return rows


def cell(*values: float | None) -> str:
    return " / ".join("–" if value is None else f"{value:.3f}" for value in values)


def markdown(rows: list[dict], long_window: int) -> str:
    """One row per (model, seed); with several seeds, then a table of means ± standard deviations over them."""
    several = len({row["seed"] for row in rows}) > 1
    head = ["model", *(["seed"] if several else []), "params", *(f"{task} acc / MCC / F1" for task in TASKS), "bits/base 1 kb",
            f"bits/base {long_window / 1024:g} kb", "steps (pretrain; tasks)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], *([str(row["seed"])] if several else []), f"{row['parameters'] / 1e6:.2f} M"]
        cells += [cell(row[f"{task}_accuracy"], row[f"{task}_mcc"], row[f"{task}_f1"]) for task in TASKS]
        cells += [cell(row["bits_per_base_1k"]), cell(row["bits_per_base_long"])]
        steps = [row["pretrain_steps"], *(row[f"{task}_steps"] for task in TASKS)]
        steps = ["–" if n is None else str(n) for n in steps]  # a run that failed
        cells.append(f"{steps[0]}; " + ", ".join(steps[1:]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nMean ± standard deviation over the seeds:\n\n{mean_table(rows, long_window)}" if several else "")


def mean_table(rows: list[dict], long_window: int) -> str:
    """Test accuracy per task and bits per base, mean ± std over each model's seeds (runs without a value skipped)."""
    columns = {**{f"{task} acc": f"{task}_accuracy" for task in TASKS}, "bits/base 1 kb": "bits_per_base_1k",
               f"bits/base {long_window / 1024:g} kb": "bits_per_base_long"}
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model in dict.fromkeys(row["model"] for row in rows):
        cells = []
        for key in columns.values():
            values = [row[key] for row in rows if row["model"] == model and row[key] is not None]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}" if values else "–")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="every model runs once per seed (the app's seed=)")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=800)
    parser.add_argument("--minutes-per-phase", type=float, default=2.25, help="time cap of every training run")
    parser.add_argument("--long-window", type=int, default=8192, help="test bits per base again at this length")
    parser.add_argument("--parallel", type=int, default=10, help="processes at the same time (25 ran the H100 out of memory)")
    parser.add_argument("--out", default="genomics_tasks", help="file stem of the results under benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks/genomics"))
    parser.add_argument("overrides", nargs="*", default=["trainer=gpu", "trainer.precision=32-true"],
                        help="extra Hydra overrides for every run (default: trainer=gpu trainer.precision=32-true)")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pretrain_budget = budget(args.pretrain_steps, args.minutes_per_phase, 100)
    runs = [(m, seed) for seed in args.seeds for m in args.models]
    pretrain = {label(m, seed, "pretrain"): ("train", [*PRETRAIN, *SHAPE, *MODELS[m], *pretrain_budget, *args.overrides, f"seed={seed}"])
                for m, seed in runs}
    failed = run_all(pretrain, args.runs_dir, args.parallel)
    second = {}
    for model, seed in runs:
        if label(model, seed, "pretrain") in failed:
            continue
        checkpoint = f"ckpt_path={args.runs_dir / label(model, seed, 'pretrain')}"
        long_test = [f"data.eval_window={args.long_window}", "data.test_windows=128", "data.batch_size=8"]
        second[label(model, seed, f"eval{args.long_window}")] = ("eval", [checkpoint, *long_test, *args.overrides, f"seed={seed}"])
        for task, data in TASKS.items():
            second[label(model, seed, task)] = ("finetune", [checkpoint, f"task={task}", *data, "data.test_windows=2000",
                                                             *budget(args.finetune_steps, args.minutes_per_phase, 100), *args.overrides,
                                                             f"seed={seed}"])
    failed += run_all(second, args.runs_dir, args.parallel)
    rows = collect(args.runs_dir, args.models, args.seeds, args.long_window)
    text = markdown(rows, args.long_window)
    print(text)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    info = {"benchmark": "genomics tasks: test accuracy / MCC / macro F1; masked-LM bits per base on human chr22 test regions",
            "device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "lightning": lightning.__version__, "python": platform.python_version(), "overrides": args.overrides,
            "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
            "minutes_per_phase": args.minutes_per_phase, "long_window": args.long_window, "seeds": args.seeds, "failed": failed,
            "wall_seconds": round(time.perf_counter() - started), "models": MODELS, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(info, indent=2) + "\n")
    header = f"{info['benchmark']}; {device}; torch {torch.__version__}; {info['date']}; wall {info['wall_seconds']} s"
    (RESULTS / f"{args.out}.md").write_text(f"{header}\n\n{text}\n")
    if failed:
        raise SystemExit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
