"""Speech separation benchmark through the speech app: SI-SNRi on mixtures of real LibriVox recordings.

    python -m benchmarks.speech_separation [--models attention mamba2 gated_deltanet convtasnet] [--parallel 4]
        [--steps 2000] [--minutes 5] [-- overrides...]
    python -m benchmarks.speech_separation --out speech_separation_cpu_smoke --steps 5 --parallel 1 -- data.train_voices=8

Every model trains on the same two-speaker dynamic mixtures of espeak-ng voices with the same budget
(`experiment=separation`: --steps of 8 two-second mixtures, 2,000 by default, each run capped at --minutes) and is tested on the
20 mixtures of the five LibriVox recordings in ../shared/data/speech/librivox (all read by one person: same-speaker
mixtures), then its best checkpoint is tested again (`eval`) on 64 mixtures of 8 espeak-ng voices that neither
training nor validation used (ESPEAK_TEST; espeak-ng voices also when the training voices interleave flite's or Festival's,
`-- data.engines=[espeak,flite]`): mixtures of different speakers, and of two sentences of one speaker (HELD_OUT).
The second tells a model that cannot separate one speaker from one that cannot separate real speech; so does a last test, on
the LibriVox mixtures with the second source played WARP times faster (`data.test_warps`: two apparent speakers of real
speech). The synthetic speech is
synthesised once into a shared cache before the models start (one synthesiser per CPU core); the models
then train in parallel processes (on one GPU: trainer=gpu is added when CUDA is available; since session 16 the
training steps are replayed as CUDA graphs there, the apps' default). Prints the table
and writes benchmarks/results/<out>.{json,md} with device, versions and date. Each run has its folder in --runs-dir
(<model>, <model>_<test>); a run that finished with the same command is kept, so the same command started again
(after a time limit, say) trains and tests only what is missing, and a model trained again is tested again.
On CPU use --parallel 1: four models at once on a 2-core, 23 GB machine ran Gated DeltaNet (the chunk form on CPU)
out of memory in the smoke run above (session 9); the other three finished in 13 minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import torch
import torchaudio
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from apps.common.cli import QUIET, register_mixers, register_resolvers
from apps.speech.__main__ import APP
from apps.speech.model import count_parameters
from apps.speech.sources import folder_speakers
from apps.speech.task import build_model
from apps.speech.tts import synthesize_into_cache
from benchmarks.parallel import run_parallel, step_budget, unfinished

MODELS = {  # similar sizes: about 1.5 M parameters each (the table lists them)
    "attention": ["model/mixer=attention", "model.d_model=144", "model.mlp_expand=4.0"],
    "mamba2": ["model/mixer=mamba2"],
    "gated_deltanet": ["model/mixer=gated_deltanet"],
    "convtasnet": ["model=convtasnet_base"],
}
METRICS = {"test/si_snri": "SI-SNRi (dB)", "test/sdri": "SDRi (dB)", "test/si_snr": "SI-SNR (dB)"}
# three more test sets: of espeak-ng voices heard neither in training nor in validation, mixtures of different speakers
# (unlike the LibriVox recordings, which are all read by one person) and of two sentences of one voice (as LibriVox's);
# and the LibriVox mixtures again with the second source played WARP times faster (pitch and formants up by a quarter,
# the reader's median f0 about 100 -> 125 Hz): real speech of two apparent speakers
ESPEAK_TEST = ["data.test=espeak", "data.test_voices=8", "data.test_mixtures=64"]  # the runs' overrides may change these
WARP = 1.25
HELD_OUT = {  # run-name suffix: (overrides before the runs' own, overrides after them, name in the table)
    "espeak": (ESPEAK_TEST, ["data.engines=[espeak]"], "held-out espeak-ng"),
    "espeak_same": (ESPEAK_TEST, ["data.test_same_speaker=true", "data.engines=[espeak]"], "held-out espeak-ng same-speaker"),
    "librivox_warped": ([], [f"data.test_warps=[1.0,{WARP}]"], f"LibriVox, second source warped x{WARP}"),
}
RESULTS = Path(__file__).parent / "results"


def compose_config(overrides: list[str]):
    register_mixers(APP.config_dir)
    register_resolvers()
    with initialize_config_dir(config_dir=str(APP.config_dir), version_base="1.3"):
        return compose("config", overrides=["experiment=separation", *overrides])


def held_out_test(overrides: list[str], test: str = "espeak") -> list[str]:
    """The overrides of a held-out test (HELD_OUT) around those given (the espeak-ng tests: espeak-ng voices whatever the
    training engines)."""
    before, after, _ = HELD_OUT[test]
    return [*before, *overrides, *after]


def presynthesize(overrides: list[str], workers: int) -> None:
    """Fill the speech cache once for every voice the runs use (they would otherwise all synthesise): the training
    and validation voices of the runs' engines, the training voices' f0-siblings if asked for, the held-out espeak-ng
    test voices, and the decoded training recordings (data.recordings) if any."""
    train, test = compose_config(overrides).data, compose_config(held_out_test(overrides)).data
    voices = train.train_voices + train.val_voices
    for data, indices in ((train, range(voices)), (test, range(voices, voices + test.test_voices))):
        synthesize_into_cache(indices, data.utterances_per_voice, data.sample_rate, data.cache_dir, workers, data.engines)
    if train.same_speaker_f0_shift:
        for sibling in range(1, train.num_speakers):
            synthesize_into_cache(
                range(train.train_voices), train.utterances_per_voice, train.sample_rate, train.cache_dir, workers,
                train.engines, sibling, train.same_speaker_f0_shift,
            )  # fmt: skip
    if train.get("recordings"):
        folder_speakers(train.recordings, train.sample_rate, train.cache_dir)


def training_data(data: DictConfig) -> str:
    """What the models train on, in words: the voices' engines (and recordings), the segment, the share of same-speaker
    mixtures, passages, rooms."""
    same = f", {data.same_speaker_fraction:.0%} of them same-speaker" if data.same_speaker_fraction else ""
    if data.get("same_speaker_f0_shift"):
        same += f" (f0-siblings, shift {data.same_speaker_f0_shift:g})"
    passages = ", sources read on sentence after sentence" if data.get("passages") else ""
    if data.get("reverb_fraction"):
        passages += f", {data.reverb_fraction:.0%} of the sources in a synthetic room (rt60 {data.reverb_rt60[0]:g}-{data.reverb_rt60[1]:g} s)"
    voices = " + ".join(data.engines)
    if data.get("recordings"):
        voices = f"{voices} ({1 - data.recordings_fraction:.0%}) and recordings in {data.recordings} ({data.recordings_fraction:.0%})"
    return f"{voices} dynamic mixtures of {data.segment_seconds:g} s{same}{passages}"


def command(model: str, runs_dir: Path, overrides: list[str]) -> list[str]:
    """Train `model` into runs_dir/<model>."""
    return [sys.executable, "-m", "apps.speech", "train", "experiment=separation", f"name=separation_{model}",
            f"paths.runs={runs_dir}", f"hydra.run.dir={runs_dir / model}", *MODELS[model], *QUIET, *overrides]  # fmt: skip


def held_out_test_command(model: str, runs_dir: Path, overrides: list[str], test: str) -> list[str]:
    """Test the trained model again (its best checkpoint, or the last where no validation ran) on a held-out test of HELD_OUT,
    into runs_dir/<model>_<test>."""
    checkpoints = runs_dir / model / "checkpoints"
    checkpoint = next(path for path in (checkpoints / "best.ckpt", checkpoints / "last.ckpt") if path.exists())
    return [sys.executable, "-m", "apps.speech", "eval", f"ckpt_path={checkpoint}", f"name=separation_{model}_{test}",
            f"paths.runs={runs_dir}", f"hydra.run.dir={runs_dir / f'{model}_{test}'}", *QUIET, *held_out_test(overrides, test)]  # fmt: skip


def record_of(run_name: str, runs_dir: Path) -> dict:
    """metrics.json of the run in runs_dir/<run_name>; {"metrics": {}} where it failed or has not run."""
    path = runs_dir / run_name / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {"metrics": {}}


def per_mixture(record: dict) -> dict[str, float]:
    """SI-SNRi of every test mixture of a run (its test_per_utterance.csv), by mixture name; {} where there is none."""
    path = Path(record["run_dir"]) / "test_per_utterance.csv" if "run_dir" in record else None
    if path is None or not path.is_file():
        return {}
    table = pd.read_csv(path)
    return dict(zip(table["mixture"], table["si_snri"].astype(float)))


def row(model: str, runs_dir: Path, overrides: list[str]) -> dict:
    record = record_of(model, runs_dir)
    held_out = {f"{test}/si_snri": record_of(f"{model}_{test}", runs_dir) for test in HELD_OUT}
    parameters = count_parameters(build_model(compose_config([*MODELS[model], *overrides])))
    return {"model": model, "parameters": parameters, "steps": record["steps"], "run_seconds": record["seconds"],
            **{key: record["metrics"][key] for key in METRICS},
            **{key: held["metrics"].get("test/si_snri", float("nan")) for key, held in held_out.items()},
            "per_mixture": {"test/si_snri": per_mixture(record), **{key: per_mixture(held) for key, held in held_out.items()}},
            "run_dir": record["run_dir"]}  # fmt: skip


def paired(mixer: dict, baseline: dict, key: str) -> str:
    """The per-mixture difference of SI-SNRi (`key`) between two rows over the mixtures both were tested on, in words:
    its standard error and on how many the mixer is ahead ("" without per-mixture results)."""
    a, b = mixer.get("per_mixture", {}).get(key, {}), baseline.get("per_mixture", {}).get(key, {})
    differences = np.array([a[name] - b[name] for name in a.keys() & b.keys()])
    if len(differences) < 2:
        return ""
    error = differences.std(ddof=1) / np.sqrt(len(differences))
    return f" (per mixture: {differences.mean():+.2f} ± {error:.2f} dB standard error, ahead on {(differences > 0).sum()} of {len(differences)})"


def markdown(rows: list[dict]) -> str:
    heads = [f"LibriVox {name}" for name in METRICS.values()] + [f"{name} SI-SNRi (dB)" for *_, name in HELD_OUT.values()]
    held_out = [f"{test}/si_snri" for test in HELD_OUT]
    lines = ["| model | parameters | steps | " + " | ".join(heads) + " | run seconds |", "|" + "---|" * (len(heads) + 4)]
    for r in rows:
        scores = " | ".join(f"{r[key]:.2f}" for key in [*METRICS, *held_out])
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['steps']} | {scores} | {r['run_seconds']:.0f} |")
    baseline = next((r for r in rows if r["model"] == "convtasnet"), None)
    mixers = [r for r in rows if r["model"] != "convtasnet"]
    if baseline and mixers:
        lines.append("")
        for key, test in (("test/si_snri", "LibriVox"), *((f"{t}/si_snri", name) for t, (*_, name) in HELD_OUT.items())):
            best = max(mixers, key=lambda r: r[key])
            lines.append(
                f"{test}: best mixer ({best['model']}) minus Conv-TasNet: {best[key] - baseline[key]:+.2f} dB SI-SNRi"
                f"{paired(best, baseline, key)} (target: +2 dB)."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--parallel", type=int, default=4, help="models trained at the same time")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps of every model (the same for all)")
    parser.add_argument("--minutes", type=float, default=5.0, help="time cap of every training run (a run that reaches it makes fewer steps)")
    parser.add_argument("--out", default="speech_separation", help="file stem of the results under benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks/speech_separation"),
                        help="the runs (one folder each) and the speech cache; a run that finished with the same command is kept, "
                        "so the same command started again runs only the rest")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. data.engines=[espeak,flite]")
    args = parser.parse_args()
    args.runs_dir = args.runs_dir.resolve()
    cache_dir = args.runs_dir / "speech_cache"  # kept between invocations
    cores = os.cpu_count() or 1
    overrides = [f"data.cache_dir={cache_dir}", *(["trainer=gpu"] if torch.cuda.is_available() else []), *args.overrides]
    data = compose_config(overrides).data
    overrides = [*step_budget(args.steps, args.minutes, data.train_mixtures // data.batch_size), *overrides]
    # the test recordings (LibriVox by default) are there: fail before any synthesis
    recordings = sum(map(len, folder_speakers(data.test_path, data.sample_rate))) if data.test_path else 0
    held_out = compose_config(held_out_test(overrides)).data
    started = time.perf_counter()
    presynthesize(overrides, workers=cores)
    synthesis_seconds = time.perf_counter() - started
    print(f"speech cache ready in {synthesis_seconds:.0f} s", flush=True)
    threads = max(1, cores // args.parallel)
    jobs = {model: command(model, args.runs_dir, overrides) for model in args.models}
    todo = unfinished(jobs, {model: args.runs_dir / model for model in jobs})
    kept = sorted(set(jobs) - set(todo))
    if kept:
        print(f"kept from an earlier start with the same command: {', '.join(kept)} (delete their folders "
              f"in {args.runs_dir} to train them again)", flush=True)
    failed = run_parallel(todo, args.runs_dir, args.parallel, threads=threads, keep_going=True)  # one failure loses no other model
    trained = [model for model in args.models if model not in failed]
    tests = {}
    for model in trained:
        for test in HELD_OUT:
            tests[f"{model}_{test}"] = held_out_test_command(model, args.runs_dir, overrides, test)
            if model in todo:  # trained now: tested anew, though the test's command (its checkpoint's path) is the same
                shutil.rmtree(args.runs_dir / f"{model}_{test}", ignore_errors=True)
    failed += run_parallel(unfinished(tests, {name: args.runs_dir / name for name in tests}), args.runs_dir, args.parallel,
                           threads=threads, keep_going=True)
    rows = [row(model, args.runs_dir, overrides) for model in trained]
    text = markdown(rows)
    print(text)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    info = {
        "benchmark": f"2-speaker separation: trained on {training_data(data)} ({data.sample_rate // 1000} kHz, {args.steps} steps at most for every model), "
        f"tested on {data.test_mixtures} mixtures of the {recordings} recordings in {data.test_path} (LibriVox by default: one reader) "
        f"and on {held_out.test_mixtures} mixtures of {held_out.test_voices} held-out espeak-ng voices (different speakers, then one speaker), "
        f"then on the first test's mixtures with the second source warped x{WARP}",
        "device": device, "cpu_cores": cores, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "torchaudio": torchaudio.__version__, "lightning": lightning.__version__, "overrides": overrides,
        "synthesis_seconds": round(synthesis_seconds), "wall_seconds": round(time.perf_counter() - started), "kept": kept, "rows": rows,
        "failed": failed,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    header = f"{info['benchmark']}; {device}; torch {torch.__version__}; {info['date']}; wall {info['wall_seconds']} s"
    header += f" (this start; trained in an earlier one: {', '.join(kept)})\n\n" if kept else "\n\n"
    failures = "".join(f"\n{name}: failed, see {args.runs_dir / (name + '.log')}" for name in failed)
    (RESULTS / f"{args.out}.md").write_text(header + text + "\n" + failures)
    if failed:
        raise SystemExit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
