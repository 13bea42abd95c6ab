"""Running a speech synthesiser's command-line program (flite, Festival's text2wave) with errors that name the fix."""
from __future__ import annotations

import shutil
import subprocess


def run_program(program: str, arguments: list[str], fix: str, text: str = "", error_marker: str | None = None) -> bytes:
    """Standard output of `program *arguments` with `text` on its standard input. FileNotFoundError naming `fix` when
    the program is not on PATH; RuntimeError with the program's own message and `fix` when it exits non-zero or, for
    programs that report some errors with exit status 0, when its standard error holds `error_marker`."""
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(f"the {program!r} program is not on PATH: {fix}")
    done = subprocess.run([path, *arguments], input=text.encode(), capture_output=True)
    error = done.stderr.decode(errors="replace").strip()
    if done.returncode or (error_marker is not None and error_marker in error):
        raise RuntimeError(f"{path} {' '.join(arguments)} failed (exit {done.returncode}): {error}; {fix}")
    return done.stdout
