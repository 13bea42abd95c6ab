"""The genomics benchmark's tables: one row per model and seed, then means and standard deviations over seeds."""
from __future__ import annotations

from benchmarks.genomics_tasks import TASKS, label, markdown


def row(model: str, seed: int, accuracy: float | None) -> dict:
    out = {"model": model, "seed": seed, "parameters": 500_000, "bits_per_base_1k": 1.7, "bits_per_base_long": None,
           "pretrain_steps": 300 if accuracy is not None else None}
    for task in TASKS:
        out |= {f"{task}_accuracy": accuracy, f"{task}_mcc": accuracy, f"{task}_f1": accuracy,
                f"{task}_steps": 200 if accuracy is not None else None}
    return out


def test_one_seed_has_no_seed_column_and_no_means():
    text = markdown([row("bimamba2", 42, 0.9)], 8192)
    assert "| seed |" not in text and "Mean" not in text and "| bimamba2 | 0.50 M | 0.900 / 0.900 / 0.900 |" in text


def test_several_seeds_add_means_and_skip_failed_runs():
    rows = [row("rc_mamba2", 42, 0.7), row("rc_mamba2", 1, 0.8), row("rc_mamba2", 2, None)]
    text = markdown(rows, 8192)
    assert "| rc_mamba2 | 2 | 0.50 M | – / – / – |" in text and "| –; –, –, –, – |" in text  # the failed run
    means = text.split("Mean ± standard deviation over the seeds:")[1]
    assert "| rc_mamba2 | 0.750 ± 0.071 | 0.750 ± 0.071 | 0.750 ± 0.071 | 0.750 ± 0.071 | 1.700 ± 0.000 | – |" in means


def test_run_labels_name_model_run_and_seed():
    assert label("mlstm", 1, "pretrain") == "mlstm-pretrain-seed1"
