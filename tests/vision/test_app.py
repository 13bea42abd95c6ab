"""The vision app end to end, in-process through the real command line (`apps.common.cli.main`).

Every run is tiny (a few batches, embed_dim 32) and writes under pytest's tmp_path.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from apps.common.cli import QUIET, main
from apps.vision.__main__ import APP

FASHION = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vision" / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason=f"no Fashion-MNIST under {FASHION}")

TINY = ["model.embed_dim=32", "model.depth=2", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=3", "data.batch_size=32", *QUIET]
FAST_DEV = ["model.embed_dim=32", "model.depth=2", "data.batch_size=8", "trainer.fast_dev_run=true", *QUIET]


def cli(*args: str):
    return main(APP, list(args))


def cli_error(capsys, *args: str) -> str:
    """Run a command that must fail; Hydra prints the error to stderr and exits with status 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(*args)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def only_run(parent: Path) -> Path:
    (run_dir,) = [path.parent for path in parent.glob("**/metrics.json")]
    return run_dir


def test_help_lists_verbs_models_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("train", "eval", "predict", "model/mixer:", "experiment: fashion_mnist", "gated_cnn, gdn", "python -m apps.vision"):
        assert text in out, text


def test_train_eval_predict_on_default_digits(tmp_path, capsys):
    train_dir = tmp_path / "train"
    trained = cli("train", *TINY, f"paths.runs={tmp_path}", f"hydra.run.dir={train_dir}")
    for name in ("metrics.json", "loss_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (train_dir / name).is_file(), name
    record = metrics_of(train_dir)
    assert record["name"] == "digits" and record["checkpoint"].endswith("best.ckpt")
    assert set(record["metrics"]) >= {"test/top1", "test/top5", "test/loss", "test/images_per_second", "test/peak_memory_mb"}
    assert record["metrics"]["test/top1"] <= record["metrics"]["test/top5"]
    confusion = pd.read_csv(train_dir / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (10, 10) and confusion.to_numpy().sum() == 3 * 32  # three test batches
    log = pd.read_csv(train_dir / "csv" / "metrics.csv")
    assert log["train/images_per_second"].dropna().iloc[0] > 0 and "val/top1" in log

    stored = torch.load(train_dir / "checkpoints" / "best.ckpt", weights_only=True)["ImageDataModule"]
    assert stored["classes"] == [str(d) for d in range(10)] and stored["img_size"] == [8, 8]
    assert stored["mean"].shape == (1,) and 0 < stored["std"].item() < 1  # normalisation travels with the model

    # the checkpoint reloads (model and normalisation from the checkpoint) and gives the same test accuracy
    evaluated = cli("eval", f"ckpt_path={train_dir}")
    for key in ("test/top1", "test/top5", "test/loss"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6)

    images = load_digits()
    for i in range(3):
        Image.fromarray(np.uint8(images.images[i] * 255 / 16)).save(tmp_path / f"digit{i}.png")
    capsys.readouterr()
    predictions = cli("predict", f"ckpt_path={train_dir}", f"data.predict_path={tmp_path}")
    printed = capsys.readouterr().out
    assert list(predictions["file"]) == [str(tmp_path / f"digit{i}.png") for i in range(3)]
    assert all(f"digit{i}.png: {label} (" in printed for i, label in enumerate(predictions["label"]))
    probabilities = predictions[[str(d) for d in range(10)]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities.max(1), predictions["probability"], rtol=1e-6)
    predict_dir = next((tmp_path / "vision" / "digits" / "predict").iterdir())
    assert len(pd.read_csv(predict_dir / "predictions.csv")) == 3

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour.png")
    error = cli_error(capsys, "predict", f"ckpt_path={train_dir}", f"data.predict_path={tmp_path / 'colour.png'}")
    assert "colour.png is a RGB image (mode RGB) but the model takes grayscale images" in error
    converted = cli("predict", f"ckpt_path={train_dir}", f"data.predict_path={tmp_path / 'colour.png'}", "data.convert=true")
    assert len(converted) == 1
    assert "predict needs images: pass data.predict_path" in cli_error(capsys, "predict", f"ckpt_path={train_dir}")


@needs_fashion
def test_fashion_mnist_experiment_with_a_scanned_mixer(tmp_path):
    overrides = ["experiment=fashion_mnist", f"data.path={FASHION}", "model=vil", *TINY, "data.eval_batch_size=64",
                 f"paths.runs={tmp_path}"]
    trained = cli("train", *overrides)
    run_dir = only_run(tmp_path)
    assert metrics_of(run_dir)["name"] == "fashion_mnist"
    assert 0.0 <= trained["test/top1"] <= trained["test/top5"] <= 1.0
    assert pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0).index[0] == "T-shirt/top"


@pytest.mark.parametrize("model", ["vim", "vmamba", "gdn", "gated_cnn"])
def test_every_model_config_trains_one_step(model, tmp_path):
    metrics = cli("train", f"model={model}", *FAST_DEV, f"paths.runs={tmp_path}")
    assert np.isfinite(metrics["test/loss"])


def test_mixer_scan_and_hybrid_from_the_command_line(tmp_path):
    metrics = cli("train", "model=vil", "model/mixer=gla", "model.scan=cross", *FAST_DEV, f"paths.runs={tmp_path}")
    assert np.isfinite(metrics["test/loss"])
    metrics = cli("train", "model=vim", "model.layers=[mamba2,attention]", "model.class_token=true",
                  "+model.cls_position=middle", *FAST_DEV, f"paths.runs={tmp_path}")
    assert np.isfinite(metrics["test/loss"])


def test_mixup_cutmix_label_smoothing_and_augmentation(tmp_path, capsys):
    metrics = cli("train", "task.mixup_alpha=0.8", "task.cutmix_alpha=1.0", "task.label_smoothing=0.1",
                  "data.augment.crop_padding=1", "data.augment.hflip=true", "data.augment.random_erasing=0.5",
                  *FAST_DEV, f"paths.runs={tmp_path}")
    assert np.isfinite(metrics["test/loss"])
    error = cli_error(capsys, "train", "task.mixup_alpha=0.8", *FAST_DEV, "data.batch_size=7", f"paths.runs={tmp_path}")
    assert "data.batch_size must be even, got 7" in error


def test_missing_data_directory_is_named(tmp_path, capsys):
    error = cli_error(capsys, "train", "data=fashion_mnist", f"data.path={tmp_path / 'missing'}", *FAST_DEV, f"paths.runs={tmp_path}")
    assert f"Fashion-MNIST directory {tmp_path / 'missing'} does not exist; pass data.path=DIR" in error


def test_bf16_autocast_trains(tmp_path):
    """The precision of trainer=gpu (bf16-mixed), here on the CPU: every dtype path of a scanned mixer and the task."""
    metrics = cli("train", "model=vim", "trainer.precision=bf16-mixed", *FAST_DEV, f"paths.runs={tmp_path}")
    assert np.isfinite(metrics["test/loss"])
