"""Launch settings read from the environment: SEQMIX_SPECIALISE_LENGTHS decides, at import, whether the kernels' length
arguments are specialised (one compiled variant per class of length) or not (one for every length, the default)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.kernels.helpers import ROOT, needs_triton

PROBE = (
    "from kernels.linear_recurrence.passes import _fwd_h_kernel, _bwd_dqk_kernel;"
    "print(sorted({p.name for k in (_fwd_h_kernel, _bwd_dqk_kernel) for p in k.fn.params if p.do_not_specialize}))"
)


def unspecialised(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SEQMIX_SPECIALISE_LENGTHS"}
    if env_value is not None:
        env["SEQMIX_SPECIALISE_LENGTHS"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@needs_triton
def test_lengths_stay_unspecialised_unless_asked() -> None:
    assert unspecialised(None) == "['T', 'n_rows']"
    assert unspecialised("0") == "['T', 'n_rows']"
    assert unspecialised("1") == "[]"
