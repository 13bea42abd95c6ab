"""The README's promises: the mixer table and the two quick-start commands."""
from pathlib import Path

import core

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_registered_mixer() -> None:
    missing = [name for name in core.available_mixers() if f"| `{name}` |" not in README]
    assert not missing, f"README's mixer table lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test " in README and "make train " in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
