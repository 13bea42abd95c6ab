"""What the kernel test modules share: tolerances, the check, and the interpreter subprocess run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.kernels.cases import Case

ROOT = Path(__file__).resolve().parents[2]
# relative RMS error allowed for (outputs and states, gradients)
TOLERANCE = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4), "float16": (5e-3, 1e-2), "bfloat16": (5e-3, 1e-2)}


def check(case: Case, errors: dict[str, float]) -> None:
    tol_out, tol_grad = TOLERANCE[case.dtype]
    bad = {name: err for name, err in errors.items() if not err <= (tol_out if name in ("o", "state") else tol_grad)}
    assert not bad, f"{case.name}: relative RMS errors above ({tol_out}, {tol_grad}): {bad}; all: {errors}"


def run_interpreter(op: str) -> dict[str, dict[str, float]]:
    """Errors of every interpreter case of `op`, by case name, from `python -m tests.kernels.cases OP`
    in a subprocess (TRITON_INTERPRET=1 must be set before Triton is imported, and must not leak)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.cases", op], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"interpreter run failed:\n{run.stdout}\n{run.stderr[-5000:]}"
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r["errors"] for r in results}
