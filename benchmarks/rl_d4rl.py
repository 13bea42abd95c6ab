"""Offline RL benchmark through the rl app: D4RL-style MuJoCo data sets, Decision Transformers with three
mixers and behaviour cloning, 3 seeds each, scored by rollouts in gymnasium's v5 environments.

    python -m benchmarks.rl_d4rl                                  # 48 trainings on one GPU, about 8 minutes
    python -m benchmarks.rl_d4rl --models bc dt_attention --datasets hopper-medium --seeds 0 --parallel 2 -- trainer.accelerator=cpu

Every (data set, model, seed) is one `python -m apps.rl train` process; --parallel of them share the GPU
(the networks are small, so several processes keep it busy). The budget (the BUDGET overrides and --train-time)
is set so that 48 trainings fit in about 8 minutes on one H100 with 16 CPU cores: whole episodes as
training windows (data.context=null, what recurrent inference sees), --epochs (3) of 250 batches (16 episodes
of HalfCheetah, 32 of Hopper) cut at --train-time (80 s) of training, 5 validation episodes after every epoch,
10 test episodes of the best checkpoint, each a batch of environments stepped together, one target return
per data set. Measured on the H100 (session 2): 380 s wall, 65-126 s per run, 55-620 training steps per run:
far fewer than Decision Transformers are usually trained for, so longer budgets (--train-time with --epochs)
should raise every score.
Then, with the halfcheetah-medium checkpoints of seed 0 (1000-step episodes), `rollout` measures the
policy's latency per environment step: recurrent state (Mamba-2, Gated DeltaNet), attention's KV cache, and
the original Decision Transformer evaluation that re-runs the whole context at every step (`window`).
Prints the tables and writes benchmarks/results/<out>.{json,md} with device, versions and date.
On a GPU every run is `trainer=gpu` (bf16-mixed) since session 7; the committed results below trained in float32
(`trainer.accelerator=gpu` only), where Mamba-2 and Gated DeltaNet take the PyTorch chunk form, not the kernels.
A benchmark too long for one machine's session runs in parts, `--datasets` split between them; the committed
results are these two (hopper on an H100, HalfCheetah on an H200: 24 HalfCheetah trainings at once need more
than an H100's 80 GB), 251-1462 training steps per run:

    python -m benchmarks.rl_d4rl --datasets hopper-medium hopper-medium_replay --parallel 24 --train-time 330 --epochs 20 --out rl_part1
    python -m benchmarks.rl_d4rl --datasets halfcheetah-medium halfcheetah-medium_replay --parallel 24 --train-time 330 --epochs 20 --merge benchmarks/results/rl_part1.json

`--merge` adds the earlier parts' runs and latency rows (those of policies this part did not time) to the tables, and their
failed runs to the list of failures unless this part ran them.
In bf16 with equal steps (4 epochs, every run its 1,000 steps), session 9, H100, 326 s for the 24 hopper trainings:

    python -m benchmarks.rl_d4rl --datasets hopper-medium hopper-medium_replay --parallel 24 --epochs 4 --train-time 380 --out rl_d4rl_hopper_bf16

The same for HalfCheetah on an H200 (`--train-time 400`) needed more than 560 s with 24 at a time, so it ran as two calls
of 12 trainings each on one --runs-dir (session 10: 325 s and 423 s; the first call's runs, logs and latency timings
copied to the second machine), the second with all four models, so that it trains only the missing 12 and writes the
whole table:

    python -m benchmarks.rl_d4rl --datasets halfcheetah-medium halfcheetah-medium_replay --models dt_attention bc --parallel 12 --epochs 4 --train-time 400 --merge benchmarks/results/rl_d4rl_hopper_bf16.json --out rl_d4rl_bf16 --runs-dir R
    python -m benchmarks.rl_d4rl --datasets halfcheetah-medium halfcheetah-medium_replay --parallel 12 --epochs 4 --train-time 400 --merge benchmarks/results/rl_d4rl_hopper_bf16.json --out rl_d4rl_bf16 --runs-dir R

A fourth seed on the medium data sets (session 11, H100, 265 s), its latency rows taken from the merged table:

    python -m benchmarks.rl_d4rl --datasets hopper-medium halfcheetah-medium --seeds 3 --parallel 8 --epochs 4 --train-time 400 --latency-dataset hopper-medium_replay --merge benchmarks/results/rl_d4rl_bf16.json --out rl_d4rl_bf16_seed3

Runs that finished (trainings and latency timings) are kept in --runs-dir with the command they ran (see
benchmarks.parallel.unfinished): the same command started again runs only the rest, e.g. on the next machine with the
folder copied over.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from apps.common.cli import QUIET
from benchmarks.parallel import max_time, run_parallel, unfinished

MODELS = {
    "dt_attention": ["model/mixer=attention"],
    "dt_mamba2": ["model/mixer=mamba2"],
    "dt_gated_deltanet": ["model/mixer=gated_deltanet"],
    "bc": ["model=bc"],
}
# one target return per data set, a little above the best episode of the data (DT conditioning)
DATASETS = {
    "halfcheetah-medium": ["data.targets=[4500]", "data.batch_size=16"],
    "halfcheetah-medium_replay": ["data.targets=[4500]", "data.batch_size=16"],
    "hopper-medium": ["data.targets=[750]", "data.batch_size=32"],
    "hopper-medium_replay": ["data.targets=[750]", "data.batch_size=32"],
}
BUDGET = [
    "data.context=null", "data.batches_per_epoch=250",
    "task.val_episodes=5", "task.test_episodes=10",
    *QUIET,
]
LATENCY = {  # (model, inference): the halfcheetah-medium seed-0 checkpoint it is measured with
    "dt_attention (KV cache)": ("dt_attention", "recurrent"),
    "dt_mamba2 (recurrent state)": ("dt_mamba2", "recurrent"),
    "dt_gated_deltanet (recurrent state)": ("dt_gated_deltanet", "recurrent"),
    "dt_attention (window: whole context every step)": ("dt_attention", "window"),
}
RESULTS = Path(__file__).parent / "results"


def train_command(dataset: str, model: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "apps.rl", "train", f"data={dataset}", *MODELS[model], *DATASETS[dataset], *BUDGET,
            f"trainer.max_epochs={args.epochs}", f"seed={seed}", f"task.rollout_seed={seed * 100}", f"trainer.max_time={max_time(args.train_time)}",
            f"paths.runs={args.runs_dir}", f"hydra.run.dir={run_dir}", *args.overrides]


def training_rows(runs_dir: Path, datasets: list[str], models: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for dataset in datasets:
        for model in models:
            for seed in seeds:
                run_dir = runs_dir / dataset / model / f"seed{seed}"
                if not (run_dir / "metrics.json").is_file():  # a failed run (listed in the results as such)
                    continue
                record = json.loads((run_dir / "metrics.json").read_text())
                metrics = record["metrics"]
                # no evaluations.csv: --train-time ran out before the first validation (the test used the last weights)
                evaluated = (run_dir / "evaluations.csv").is_file()
                steps = int(pd.read_csv(run_dir / "evaluations.csv")["step"].max()) if evaluated else 0
                rows.append({"dataset": dataset, "model": model, "seed": seed, "score": metrics["test/score"],
                             "score_last": metrics.get("test/score_last", float("nan")),
                             "score_best_val": metrics.get("test/score_best", float("nan")),
                             "data_score": metrics["test/data_score"], "validated_steps": steps, "seconds": record["seconds"]})
    return pd.DataFrame(rows)


def merge_runs(rows: pd.DataFrame, earlier: list[dict]) -> pd.DataFrame:
    """This run's rows plus the "runs" of earlier results (JSON dicts written by this script, e.g. the other data sets
    trained on another machine); where both have a (dataset, model, seed), this run's row is kept."""
    merged = pd.concat([pd.DataFrame(e["runs"]) for e in earlier] + [rows], ignore_index=True)
    return merged.drop_duplicates(["dataset", "model", "seed"], keep="last").reset_index(drop=True)


def failed_runs(failed: list[str], earlier: list[dict], rows: pd.DataFrame) -> list[str]:
    """This run's failed jobs and the earlier parts', less those whose (dataset, model, seed) has a row now."""
    present = {f"{r.dataset}_{r.model}_seed{r.seed}" for r in rows.itertuples()}
    names = failed + [name for e in earlier for name in e.get("failed", [])]
    return [name for name in dict.fromkeys(names) if name not in present]


def score_table(rows: pd.DataFrame, column: str) -> str:
    """Models x data sets, mean ± std over seeds of `column`, and the data set's own mean score. A cell with
    fewer seeds than the fullest one says how many it has (its other runs failed); a model that no part trained on a
    data set reads "not run" there, and has no mean over the data sets."""
    datasets = list(dict.fromkeys(rows["dataset"]))
    seeds = rows.groupby(["model", "dataset"]).size().max()
    lines = ["| model | " + " | ".join(datasets) + " | mean |", "|" + "---|" * (len(datasets) + 2)]
    for model, group in rows.groupby("model", sort=False):
        stats = group.groupby("dataset")[column].agg(["mean", "std", "size"])
        cells = [f"{stats.loc[d, 'mean']:.1f} ± {stats.loc[d, 'std']:.1f}" + (f" ({stats.loc[d, 'size']} of {seeds} seeds)" if stats.loc[d, "size"] < seeds else "")
                 if d in stats.index else "not run" for d in datasets]
        mean = f"**{stats['mean'].mean():.1f}**" if len(stats) == len(datasets) else "–"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {mean} |")
    data = rows.groupby("dataset")["data_score"].first()
    lines.append("| data set mean | " + " | ".join(f"{data[d]:.1f}" for d in datasets) + f" | {data.mean():.1f} |")
    return "\n".join(lines)


def target_check(rows: pd.DataFrame, column: str) -> str:
    """The benchmark's target, cell by cell: every Decision Transformer at or above BC and above the data set's mean
    score (means over seeds of `column`). A miss below BC comes with the standard error of the difference of the two
    means, so that one inside the seeds' noise reads as such."""
    stats = rows.groupby(["dataset", "model"], sort=False)[column].agg(["mean", "std", "size"])
    data = rows.groupby("dataset")["data_score"].first()
    cells = [(dataset, model) for dataset, model in stats.index if model.startswith("dt_")]
    misses = []
    for dataset, model in cells:
        dt = stats.loc[(dataset, model)]
        if dt["mean"] <= data[dataset]:
            misses.append(f"{model} on {dataset} {dt['mean']:.1f}, not above the data set's {data[dataset]:.1f}")
        if (dataset, "bc") in stats.index and dt["mean"] < stats.loc[(dataset, "bc"), "mean"]:
            bc = stats.loc[(dataset, "bc")]
            error = (dt["std"] ** 2 / dt["size"] + bc["std"] ** 2 / bc["size"]) ** 0.5
            misses.append(f"{model} on {dataset} {dt['mean']:.1f}, below BC's {bc['mean']:.1f} "
                          f"(difference {dt['mean'] - bc['mean']:+.1f}, standard error {error:.1f})")
    verdict = "met in every cell" if not misses else f"{len(misses)} misses: " + "; ".join(misses)
    return f"Target (every DT at or above BC and above the data set's mean; DT cells checked: {len(cells)}): {verdict}."


def latency_dir(runs_dir: Path, label: str) -> Path:
    model, inference = LATENCY[label]
    return runs_dir / "latency" / f"{model}_{inference}"


def latency_rows(runs_dir: Path, labels: list[str]) -> list[dict]:
    rows = []
    for label in labels:
        path = latency_dir(runs_dir, label) / "metrics.json"
        if not path.is_file():  # a failed rollout
            continue
        metrics = json.loads(path.read_text())["metrics"]
        rows.append({"policy": label, "ms_per_step": metrics["test/ms_per_step"], "score": metrics["test/score"]})
    return rows


def merge_latency(rows: list[dict], earlier: list[dict]) -> list[dict]:
    """This part's latency rows and the earlier parts' (e.g. attention's measured in a part that trained only it), one
    per policy, this part's where both have it, in LATENCY's order."""
    merged = {r["policy"]: r for e in earlier for r in e.get("latency", [])}
    merged.update({r["policy"]: r for r in rows})
    return [merged[label] for label in LATENCY if label in merged]


def latency_table(latency: list[dict], dataset: str) -> str:
    if not latency:
        return f"Policy latency per environment step: not measured (it needs the {dataset} checkpoints of seed 0: --datasets without it)."
    return f"Policy latency per environment step on {dataset} (10 environments batched):\n\n" + "\n".join(
        ["| policy | ms / step | score |", "|---|---|---|"] + [f"| {r['policy']} | {r['ms_per_step']:.2f} | {r['score']:.1f} |" for r in latency])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=16, help="trainings at the same time")
    parser.add_argument("--train-time", type=int, default=80, help="seconds of training per run at most (trainer.max_time)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of 250 batches per run at most (trainer.max_epochs)")
    parser.add_argument("--latency-dataset", default="halfcheetah-medium", help="whose seed-0 checkpoints time the policies")
    parser.add_argument("--out", default="rl_d4rl", help="file stem of the results under benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks/rl_d4rl"))
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="JSON results of earlier runs (other data sets or seeds, e.g. from another machine) whose runs join the tables")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training, e.g. trainer.accelerator=cpu")
    args = parser.parse_args()
    earlier = [json.loads(path.read_text()) for path in args.merge]  # read first: a bad path fails before any training
    # on a GPU bf16-mixed (trainer=gpu), so that the recurrent mixers run their Triton kernels, not the float32 PyTorch form
    accelerator = ["trainer=gpu"] if torch.cuda.is_available() else ["trainer.accelerator=cpu"]
    args.overrides = accelerator + args.overrides
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs, run_dirs = {}, {}  # the 1000-step HalfCheetah runs first, so that the short Hopper runs fill the end
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                name = f"{dataset}_{model}_seed{seed}"
                run_dirs[name] = args.runs_dir / dataset / model / f"seed{seed}"
                jobs[name] = train_command(dataset, model, seed, run_dirs[name], args)
    todo = unfinished(jobs, run_dirs)
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} trainings already finished in {args.runs_dir} with the same command: "
              "kept (delete the folder to train them again)", flush=True)
    failed = run_parallel(todo, args.runs_dir, args.parallel, threads=1, keep_going=True)  # one failure loses no other run
    trained_seconds = time.perf_counter() - started
    trained = training_rows(args.runs_dir, args.datasets, args.models, args.seeds)
    rows = merge_runs(trained, earlier)

    latency_dataset, latency_seed = args.latency_dataset, args.seeds[0]
    latency_labels = [label for label, (model, _) in LATENCY.items() if model in args.models and latency_dataset in args.datasets]
    latency_jobs, latency_dirs = {}, {}
    for label in latency_labels:
        model, inference = LATENCY[label]
        checkpoint = args.runs_dir / latency_dataset / model / f"seed{latency_seed}"
        if not (checkpoint / "metrics.json").is_file():  # its training failed
            continue
        name = f"latency_{model}_{inference}"
        latency_dirs[name] = latency_dir(args.runs_dir, label)
        latency_jobs[name] = [
            sys.executable, "-m", "apps.rl", "rollout", f"ckpt_path={checkpoint}", f"task.inference={inference}",
            f"paths.runs={args.runs_dir}", f"hydra.run.dir={latency_dirs[name]}", *accelerator]
    latency_todo = unfinished(latency_jobs, latency_dirs)  # like the trainings, a finished timing is kept
    failed += run_parallel(latency_todo, args.runs_dir, max(len(latency_todo), 1), threads=1, keep_going=True)
    latency = merge_latency(latency_rows(args.runs_dir, latency_labels), earlier)
    failed = failed_runs(failed, earlier, rows)

    text = "\n\n".join([
        "Normalised score (D4RL reference returns; mean ± std over seeds) of the best checkpoint (by validation rollouts) "
        "on the test episodes:\n\n" + score_table(rows, "score") + "\n\n" + target_check(rows, "score"),
        "Score of the last validation, i.e. of the final weights:\n\n" + score_table(rows, "score_last") + "\n\n"
        + target_check(rows, "score_last"),
        latency_table(latency, latency_dataset),
        f"Training steps at the last validation: {rows['validated_steps'].min()}..{rows['validated_steps'].max()} "
        f"(mean {rows['validated_steps'].mean():.0f}); "
        f"seconds per run {rows['seconds'].min():.0f}..{rows['seconds'].max():.0f}; wall {time.perf_counter() - started:.0f} s "
        f"({trained_seconds:.0f} s for this run's {len(trained)} trainings, {args.parallel} at a time)"
        + "".join(f"; merged: {len(e['runs'])} runs of {e['date']} on {e['device']}" for e in earlier) + ".",
    ])
    print(text)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    versions = {name: importlib.metadata.version(name) for name in ("torch", "gymnasium", "mujoco", "stable-baselines3", "lightning")}
    info = {"benchmark": "offline RL on D4RL-style MuJoCo v5 data sets (../shared/data/rl), normalised scores",
            "device": device, "cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat(), "versions": versions,
            "budget": BUDGET + [f"trainer.max_epochs={args.epochs}", f"trainer.max_time={args.train_time}s", f"parallel={args.parallel}"], "datasets": DATASETS,
            "overrides": args.overrides, "wall_seconds": round(time.perf_counter() - started), "runs": rows.to_dict("records"),
            "latency": latency, "failed": failed,
            "merged": [{"path": str(path), "device": e["device"], "date": e["date"], "runs": len(e["runs"])} for path, e in zip(args.merge, earlier)]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(info, indent=1, default=float) + "\n")
    header = f"{info['benchmark']}; {device}; " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {info['date']}"
    failures = "".join(f"\n{name}: failed, see {args.runs_dir / (name + '.log')}" for name in failed)
    (RESULTS / f"{args.out}.md").write_text(f"{header}\n\n{text}\n{failures}")
    if failed:
        raise SystemExit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
