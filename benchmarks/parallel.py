"""Run commands as parallel processes, each with its own log: how the app benchmarks train many models at once."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path


def run_parallel(jobs: Mapping[str, list[str]], logs: Path, parallel: int, threads: int | None = None,
                 keep_going: bool = False) -> list[str]:
    """Run {name: command} in order, at most `parallel` at a time, each writing stdout and stderr to logs/<name>.log.

    threads: OMP_NUM_THREADS / MKL_NUM_THREADS of every process (None: inherited), so that processes sharing a
    machine do not each start a thread per core. A failing process stops the others and raises SystemExit naming
    its log, unless `keep_going`; then the names of the failed jobs are returned (empty when all succeeded).
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
                if not keep_going:
                    for _, other in running:
                        other.terminate()
                    raise SystemExit(f"{name} failed (exit {process.returncode}); see {logs / (name + '.log')}")
    return failed
