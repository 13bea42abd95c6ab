"""benchmarks.parallel: run_parallel (logs per job, thread settings, failures stop the rest or are returned), the
budget overrides and which jobs an interrupted benchmark still has to run."""
import sys

import pytest

from benchmarks.parallel import max_time, run_parallel, step_budget, unfinished


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_every_job_runs_and_logs(tmp_path):
    jobs = {f"job{i}": python(f"import os; print('hello {i}', os.environ['OMP_NUM_THREADS'])") for i in range(3)}
    assert run_parallel(jobs, tmp_path, parallel=2, threads=3) == []
    for i in range(3):
        assert (tmp_path / f"job{i}.log").read_text() == f"hello {i} 3\n"


def test_a_failure_stops_the_others_or_is_returned(tmp_path, capsys):
    jobs = {"bad": python("raise SystemExit(3)"), "slow": python("import time; time.sleep(30)")}
    with pytest.raises(SystemExit, match=r"bad failed \(exit 3\); see .*bad.log"):
        run_parallel(jobs, tmp_path, parallel=2)
    jobs = {"bad": python("print('step 7: loss is nan'); raise SystemExit(3)"), "good": python("pass")}
    assert run_parallel(jobs, tmp_path, parallel=1, keep_going=True) == ["bad"]
    assert (tmp_path / "bad.log").read_text().endswith("[run_parallel] bad failed: exit 3\n")
    printed = capsys.readouterr().err  # where to look and why, as it happens (the log may go with the machine)
    assert f"bad failed (exit 3); see {tmp_path / 'bad.log'}, which ends:\n    step 7: loss is nan\n" in printed


def test_a_killed_job_says_by_which_signal(tmp_path):
    jobs = {"killed": python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")}
    assert run_parallel(jobs, tmp_path, parallel=1, keep_going=True) == ["killed"]
    assert "failed: killed by SIGKILL (the kernel's out-of-memory killer" in (tmp_path / "killed.log").read_text()


def test_max_time_is_lightnings_days_hours_minutes_seconds():
    assert max_time(80) == "00:00:01:20" and max_time(90061) == "01:01:01:01"


def test_step_budget_has_enough_epochs_for_the_steps():
    assert step_budget(2000, 5, 250) == ["trainer.max_steps=2000", "trainer.max_epochs=8", "trainer.max_time=00:00:05:00"]
    assert step_budget(2001, 0.5, 250)[1] == "trainer.max_epochs=9"  # a last, partial epoch
    assert step_budget(5, 1, 250)[1] == "trainer.max_epochs=1"


def test_an_interrupted_benchmark_runs_only_its_unfinished_jobs(tmp_path):
    dirs = {name: tmp_path / name for name in ("done", "interrupted", "changed")}
    finish = "import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}')"
    jobs = {name: python(finish) + [str(path)] for name, path in dirs.items()}
    assert run_parallel(unfinished(jobs, dirs), tmp_path, parallel=3) == []
    (dirs["interrupted"] / "metrics.json").unlink()
    (dirs["interrupted"] / "last.ckpt").write_text("stale")
    jobs["changed"] = jobs["changed"] + ["trainer.max_epochs=5"]
    todo = unfinished(jobs, dirs)
    assert sorted(todo) == ["changed", "interrupted"]  # the finished job with the same command is kept
    assert not (dirs["interrupted"] / "last.ckpt").exists() and (dirs["done"] / "metrics.json").is_file()
