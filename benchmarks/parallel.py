"""Run commands as parallel processes, each with its own log: how the app benchmarks train many models at once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


FAILURE_LINES = 25  # of a failed job's log, in its failure message


def run_parallel(jobs: Mapping[str, list[str]], logs: Path, parallel: int, threads: int | None = None,
                 keep_going: bool = False) -> list[str]:
    """Run {name: command} in order, at most `parallel` at a time, each writing stdout and stderr to logs/<name>.log.

    threads: OMP_NUM_THREADS / MKL_NUM_THREADS of every process (None: inherited), so that processes sharing a
    machine do not each start a thread per core. A failing process gets its exit status (or the signal that
    killed it) appended to its log; it stops the others and raises SystemExit naming its log and quoting its last
    FAILURE_LINES lines (the log may not outlive the machine), unless `keep_going`: then that message is printed as it
    happens and the names of the failed jobs returned (empty when all succeeded).
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, failed = list(jobs), [], []
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            with open(logs / f"{name}.log", "w") as log:  # the child keeps its own handle
                running.append((name, subprocess.Popen(jobs[name], stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(1)
        for name, process in list(running):
            if process.poll() is None:
                continue
            running.remove((name, process))
            if process.returncode:
                failed.append(name)
                reason = exit_reason(process.returncode)
                with open(logs / f"{name}.log", "a") as log:
                    log.write(f"\n[run_parallel] {name} failed: {reason}\n")
                lines = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-FAILURE_LINES:]
                message = f"{name} failed ({reason}); see {logs / (name + '.log')}, which ends:\n" + "\n".join(f"    {line}" for line in lines)
                if not keep_going:
                    for _, other in running:
                        other.terminate()
                    raise SystemExit(message)
                print(message, file=sys.stderr, flush=True)
    return failed


def unfinished(jobs: Mapping[str, list[str]], run_dirs: Mapping[str, Path], done: str = "metrics.json") -> dict[str, list[str]]:
    """The jobs still to run: a job whose run directory holds `done` and the same command (run_dir/command.json,
    written here for every job returned) is finished and left out, so a benchmark interrupted and started again
    runs only what is missing. The directory of a job to run is emptied first (no stale checkpoints)."""
    todo = {}
    for name, command in jobs.items():
        run_dir = run_dirs[name]
        recorded = run_dir / "command.json"
        if (run_dir / done).is_file() and recorded.is_file() and json.loads(recorded.read_text()) == command:
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        recorded.write_text(json.dumps(command))
        todo[name] = command
    return todo


def max_time(seconds: int) -> str:
    """Lightning's trainer.max_time, DD:HH:MM:SS, for a number of seconds (the benchmarks' time caps)."""
    return f"{seconds // 86400:02d}:{seconds % 86400 // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def step_budget(steps: int, minutes: float, batches_per_epoch: int) -> list[str]:
    """Trainer overrides for `steps` optimizer steps or `minutes`, whichever ends first, in epochs of
    `batches_per_epoch` batches (enough epochs for the steps: Lightning stops at the first limit it meets)."""
    epochs = max(1, -(-steps // batches_per_epoch))
    return [f"trainer.max_steps={steps}", f"trainer.max_epochs={epochs}", f"trainer.max_time={max_time(round(minutes * 60))}"]


def exit_reason(returncode: int) -> str:
    """'exit N', or the signal that ended the process (a negative return code), e.g. the out-of-memory killer's."""
    if returncode > 0:
        return f"exit {returncode}"
    name = signal.Signals(-returncode).name
    return f"killed by {name}" + (" (the kernel's out-of-memory killer sends it: too many processes for the memory?)" if name == "SIGKILL" else "")
