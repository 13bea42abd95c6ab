"""The offline RL benchmark's pure parts: training commands, merging parts run on different machines, tables."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks.rl_d4rl import failed_runs, latency_table, merge_latency, merge_runs, score_table, target_check, train_command


def run(dataset: str, model: str, seed: int, score: float) -> dict:
    return {"dataset": dataset, "model": model, "seed": seed, "score": score, "score_last": score, "score_best_val": score,
            "data_score": 20.0, "validated_steps": 100, "seconds": 60.0}


def test_train_command_sets_the_epoch_and_time_budget():
    args = argparse.Namespace(epochs=12, train_time=3725, runs_dir=Path("runs"), overrides=["trainer.accelerator=cpu"])
    command = train_command("hopper-medium", "bc", 1, Path("runs/x"), args)
    assert "trainer.max_epochs=12" in command and "trainer.max_time=00:01:02:05" in command
    assert command[-1] == "trainer.accelerator=cpu" and "model=bc" in command and "seed=1" in command


def test_merge_keeps_earlier_parts_and_prefers_this_run():
    earlier = {"runs": [run("halfcheetah-medium", "bc", 0, 30.0), run("hopper-medium", "bc", 0, 10.0)]}
    this = pd.DataFrame([run("hopper-medium", "bc", 0, 19.0), run("hopper-medium", "bc", 1, 21.0)])
    merged = merge_runs(this, [earlier])
    assert len(merged) == 3
    hopper = merged[merged["dataset"] == "hopper-medium"].set_index("seed")["score"]
    assert hopper.to_dict() == {0: 19.0, 1: 21.0}  # this run's seed 0 replaces the earlier one
    table = score_table(merged, "score")
    assert "| bc | 30.0 ± nan (1 of 2 seeds) | 20.0 ± 1.4 | **25.0** |" in table and "halfcheetah-medium | hopper-medium" in table


def test_cells_with_failed_seeds_say_how_many_they_have_and_failures_survive_a_merge():
    rows = pd.DataFrame([run("hopper-medium", "bc", seed, 20.0) for seed in (0, 1, 2)] + [run("hopper-medium", "dt_mamba2", 0, 22.0), run("hopper-medium", "dt_mamba2", 2, 24.0)])
    table = score_table(rows, "score")
    assert "| dt_mamba2 | 23.0 ± 1.4 (2 of 3 seeds) | **23.0** |" in table and "| bc | 20.0 ± 0.0 | **20.0** |" in table
    earlier = [{"runs": [], "failed": ["hopper-medium_dt_mamba2_seed1", "hopper-medium_bc_seed1"]}]
    assert failed_runs(["x_seed0"], earlier, rows) == ["x_seed0", "hopper-medium_dt_mamba2_seed1"]  # bc seed 1 has a row now


def test_a_model_no_part_trained_on_a_data_set_reads_not_run_and_has_no_mean():
    rows = pd.DataFrame([run("hopper-medium", "bc", 0, 20.0), run("hopper-medium", "dt_mamba2", 0, 22.0),
                         run("halfcheetah-medium", "bc", 0, 30.0)])
    table = score_table(rows, "score")
    assert "| dt_mamba2 | 22.0 ± nan | not run | – |" in table and "| bc | 20.0 ± nan | 30.0 ± nan | **25.0** |" in table


def test_target_check_names_each_miss_with_its_noise():
    bc = [run("hopper-medium", "bc", seed, score) for seed, score in enumerate((21.0, 22.0, 23.0))]
    rows = pd.DataFrame(bc + [run("hopper-medium", "dt_attention", seed, 30.0) for seed in range(3)])
    assert target_check(rows, "score") == "Target (every DT at or above BC and above the data set's mean; DT cells checked: 1): met in every cell."
    low = [run("hopper-medium", "dt_mamba2", seed, score) for seed, score in enumerate((19.0, 20.0, 21.0))]
    text = target_check(pd.DataFrame(bc + low), "score")
    assert text.endswith("2 misses: dt_mamba2 on hopper-medium 20.0, not above the data set's 20.0; "
                         "dt_mamba2 on hopper-medium 20.0, below BC's 22.0 (difference -2.0, standard error 0.8).")


def test_latency_table_says_when_this_part_did_not_measure_it():
    assert "not measured" in latency_table([], "halfcheetah-medium") and "halfcheetah-medium" in latency_table([], "halfcheetah-medium")
    table = latency_table([{"policy": "dt_mamba2 (recurrent state)", "ms_per_step": 8.1, "score": 35.9}], "halfcheetah-medium")
    assert "| dt_mamba2 (recurrent state) | 8.10 | 35.9 |" in table


def test_latency_rows_of_parts_that_trained_different_models_are_merged():
    def timed(policy: str, ms: float) -> dict:
        return {"policy": policy, "ms_per_step": ms, "score": 30.0}

    earlier = [{"latency": [timed("dt_attention (KV cache)", 8.0), timed("dt_mamba2 (recurrent state)", 9.0)]}]
    merged = merge_latency([timed("dt_mamba2 (recurrent state)", 7.0), timed("dt_gated_deltanet (recurrent state)", 7.5)], earlier)
    assert [(r["policy"], r["ms_per_step"]) for r in merged] == [
        ("dt_attention (KV cache)", 8.0), ("dt_mamba2 (recurrent state)", 7.0), ("dt_gated_deltanet (recurrent state)", 7.5)]
