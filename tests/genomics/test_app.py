"""The genomics app end to end through its command line (`apps.common.cli.main`): tiny models, a few batches."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apps.common.cli import QUIET, main
from apps.genomics.__main__ import APP

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "genomics"
needs_data = pytest.mark.skipif(not (DATA / "umaydis_genome.fa.gz").is_file(), reason=f"no genomics data under {DATA}")
TINY = ["model.d_model=16", "model.depth=1", "data.batch_size=8", "data.train_batches=3", "data.val_windows=16",
        "data.test_windows=16", "trainer.max_epochs=1", *QUIET]


def cli(*args: str):
    return main(APP, list(args))


def fails_with(capsys, message: str, *args: str) -> None:
    """The command exits with an error whose message (printed by Hydra) matches `message`."""
    with pytest.raises(SystemExit):
        cli(*args)
    assert re.search(message, capsys.readouterr().err), message


def only_run(parent: Path) -> Path:
    (run_dir,) = [path.parent for path in parent.glob("**/metrics.json")]
    return run_dir


@pytest.fixture
def runs(tmp_path, cache_dir) -> list[str]:
    return [f"paths.runs={tmp_path}", f"data.cache_dir={cache_dir}"]


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records.items()))
    return path


def test_help_lists_verbs_and_tasks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(text in out for text in ("finetune", "embed", "predict", "task:", "species", "promoter", "model/mixer:"))


def test_pretrain_offline_default_then_eval_predict_embed(tmp_path, runs, capsys):
    trained = cli("train", *TINY, "data.window=64", *runs, f"hydra.run.dir={tmp_path / 'pre'}")
    record = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert record["name"] == "pretrain" and 1.0 < trained["test/bits_per_base"] < 3.0
    evaluated = cli("eval", f"ckpt_path={tmp_path / 'pre'}")  # same masks, same windows: same numbers
    assert evaluated["test/bits_per_base"] == pytest.approx(trained["test/bits_per_base"], rel=1e-5)

    reads = write_fasta(tmp_path / "reads.fa", {"r1": "ACGTRYacgtNNACGT" * 4, "r2": "GGGCCCAT"})
    predictions = cli("predict", f"ckpt_path={tmp_path / 'pre'}", f"data.predict_path={reads}")
    assert list(predictions["name"]) == ["r1", "r2"] and (predictions["bits_per_base"] > 0).all()
    embedded = cli("embed", f"ckpt_path={tmp_path / 'pre'}", f"data.predict_path={reads}")
    (embed_dir,) = (tmp_path / "genomics" / "pretrain" / "embed").iterdir()
    assert np.load(embed_dir / "embeddings.npy").shape == (2, 16) and list(embedded["length"]) == [64, 8]

    bad = write_fasta(tmp_path / "bad.fa", {"r1": "ACGU"})
    fails_with(capsys, "'U' at position 4", "predict", f"ckpt_path={tmp_path / 'pre'}", f"data.predict_path={bad}")


def test_causal_pretraining_and_its_guard(runs, capsys):
    metrics = cli("train", *TINY, "data.window=64", "task.objective=causal", "model.bidirectional=false",
                  "model/mixer=gated_deltanet", *runs)
    assert 1.0 < metrics["test/bits_per_base"] < 3.0
    fails_with(capsys, "task.objective=causal needs a causal model", "train", *TINY, "task.objective=causal", *runs)


@needs_data
def test_species_rc_shared_then_predict(tmp_path, runs):
    metrics = cli("train", "task=species", "model/mixer=mamba2", "+model.mixer.options.d_state=8", "model.rc=shared",
                  "data.window=128", *TINY, *runs)
    assert {"test/accuracy", "test/mcc", "test/f1"} <= set(metrics)
    run_dir = only_run(tmp_path / "genomics" / "species")
    reads = write_fasta(tmp_path / "reads.fa", {"a": "ACGT" * 50, "b": "TTGCA" * 30})
    predictions = cli("predict", f"ckpt_path={run_dir}", f"data.predict_path={reads}")
    assert set(predictions["prediction"]) <= {"human", "umaydis"}
    assert np.allclose(predictions["p_human"] + predictions["p_umaydis"], 1.0)


@needs_data
def test_finetune_coding_from_pretrained_replays_the_model_only(tmp_path, runs, capsys):
    pretrain = ["model/mixer=gated_deltanet", "model.d_model=24", f"data.source.fasta={DATA / 'umaydis_genome.fa.gz'}",
                "data.window=64"]
    cli("train", *TINY, *pretrain, *runs, f"hydra.run.dir={tmp_path / 'pre'}")
    metrics = cli("finetune", f"ckpt_path={tmp_path / 'pre'}", "task=coding", "freeze_backbone=true", *TINY[2:], *runs,
                  f"hydra.run.dir={tmp_path / 'fine'}")
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    overrides = json.loads((tmp_path / "fine" / "metrics.json").read_text())["overrides"]
    assert "model.d_model=24" in overrides and not any(item.startswith("data.window") for item in overrides)
    pretrained = torch.load(tmp_path / "pre" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    finetuned = torch.load(tmp_path / "fine" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    frozen = [key for key in pretrained if key.startswith("model.backbone.")]
    assert frozen and all(torch.equal(pretrained[key], finetuned[key]) for key in frozen)
    fails_with(capsys, "its encoder differs", "finetune", f"ckpt_path={tmp_path / 'pre'}", "task=coding", "model.d_model=32",
               *TINY[2:], *runs)


@needs_data
@pytest.mark.parametrize("task", ["repeats", "promoter"])
def test_other_tasks_train(task, tmp_path, runs):
    metrics = cli("train", f"task={task}", "model/mixer=mlstm", "+model.mixer.options.num_heads=2", "data.window=96",
                  "data.rc_augment=true", *TINY, *runs)
    assert set(metrics) >= {"test/accuracy", "test/mcc", "test/f1"}
    if task == "repeats":
        run_dir = only_run(tmp_path / "genomics" / task)
        reads = write_fasta(tmp_path / "reads.fa", {"a": "ACGT" * 50})
        cli("predict", f"ckpt_path={run_dir}", f"data.predict_path={reads}")
        (predict_dir,) = (tmp_path / "genomics" / task / "predict").iterdir()
        assert {"fraction_unmasked", "fraction_repeat"} <= set(pd.read_csv(predict_dir / "predictions.csv").columns)
        assert (predict_dir / "predictions.bed").is_file()


def test_long_test_windows_and_too_long_windows(runs, capsys):
    metrics = cli("train", *TINY, "data.window=64", "data.eval_window=1024", "model/mixer=mamba2",
                  "+model.mixer.options.d_state=8", *runs)
    assert metrics["test/bits_per_base"] > 0
    fails_with(capsys, "no region holds a window of 400000 bases", "train", *TINY, "data.window=400000", *runs)
