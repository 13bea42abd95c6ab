"""ForecastTask: loss and metrics of multi-step forecasting, test reports, and what `predict` writes.

Metrics: MSE and MAE over every (window, step, target channel) on the standardised scale (the benchmark
convention), `test/mse_original` and `test/mae_original` on the data's own scale, and in the run directory
per_step_error.csv/.png (error per forecast step) and test_forecasts.png (history, truth and forecast of a
few test windows).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

from apps.common import plots
from apps.common.module import OptimizerFactory, SchedulerFactory, Task
from apps.timeseries.data import ForecastDataModule

LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.smooth_l1_loss}


def error_metrics(**kwargs: str) -> MetricCollection:
    """MSE and MAE over every element, named with the collection's prefix/postfix `kwargs`."""
    return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}, **kwargs)


class PerStepError(Metric):
    """MSE and MAE of every forecast step, averaged over windows and channels; states summed over processes."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.add_state("squared", torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("absolute", torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        error = (prediction - target).double()  # [B, H, C]
        self.squared += error.square().sum(dim=(0, 2))
        self.absolute += error.abs().sum(dim=(0, 2))
        self.count += error.shape[0] * error.shape[2]

    def compute(self) -> dict[str, Tensor]:
        return {"mse": self.squared / self.count, "mae": self.absolute / self.count}


class ForecastTask(Task):
    """Forecast the target channels of a window.

    Args:
        model: (B, lookback, n_inputs) -> (B, horizon, n_inputs), forecasting every input channel.
        target_index: the input channels that are targets (all of them for features=M, the last for MS).
        horizon: forecast length.
        loss: "mse", "mae" or "huber", on the standardised scale.
        original_scale: also report test MSE/MAE on the data's own scale.
        plot_windows: test windows drawn in test_forecasts.png (0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        target_index: Sequence[int],
        horizon: int,
        scheduler: SchedulerFactory | None = None,
        loss: str = "mse",
        original_scale: bool = True,
        plot_windows: int = 4,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"task.loss={loss!r} is not one of {', '.join(LOSSES)}")
        super().__init__(model, optimizer, scheduler, metrics=error_metrics())
        self.target_index = list(target_index)
        self.loss_fn = LOSSES[loss]
        self.original_scale = original_scale
        self.plot_windows = plot_windows
        self.original_metrics = error_metrics(prefix="test/", postfix="_original")
        self.per_step_error = PerStepError(horizon)
        self.examples: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[..., self.target_index]

    def prediction_and_target(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        return self(x), y

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.loss_fn(prediction, target)

    def on_test_epoch_start(self) -> None:
        self.examples = []

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        _, prediction, target = self.evaluate_batch(batch, "test")
        self.per_step_error.update(prediction, target)
        if self.original_scale:
            to_original = self.trainer.datamodule.inverse_transform
            self.original_metrics.update(to_original(prediction), to_original(target))
            self.log_dict(self.original_metrics, on_step=False, on_epoch=True)
        # one window from batches spread over the test set
        every = max(1, int(self.trainer.num_test_batches[0]) // max(self.plot_windows, 1))
        if batch_idx % every == 0 and len(self.examples) < self.plot_windows:
            self.examples.append((batch[0][0, :, self.target_index], target[0], prediction[0]))

    def on_test_epoch_end(self) -> None:
        errors = {name: value.cpu().numpy() for name, value in self.per_step_error.compute().items()}
        self.per_step_error.reset()
        per_step = pd.DataFrame(errors, index=pd.RangeIndex(1, len(errors["mse"]) + 1, name="step"))
        if self.trainer.is_global_zero:
            self.write_test_report(per_step, Path(self.trainer.default_root_dir))

    def write_test_report(self, per_step: pd.DataFrame, output_dir: Path) -> None:
        """per_step_error.csv/.png and test_forecasts.png (original scale, last target channel)."""
        per_step.to_csv(output_dir / "per_step_error.csv")
        plots.plot_per_step_error(per_step, output_dir / "per_step_error.png", title="test error per forecast step")
        if self.examples:
            datamodule = self.trainer.datamodule
            # history [n, lookback], truth and forecast [n, horizon]: original scale, last target channel
            history, truth, forecast = (
                datamodule.inverse_transform(torch.stack(parts).float())[..., -1].cpu().numpy()
                for parts in zip(*self.examples)
            )
            title = f"test windows: {datamodule.target_columns[-1]}"
            plots.plot_windows(history, truth, forecast, output_dir / "test_forecasts.png", title=title)

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])


def build_task(cfg: DictConfig, datamodule: ForecastDataModule) -> ForecastTask:
    """The network of `cfg.model` sized for the data, inside the ForecastTask of `cfg.task`."""
    model = instantiate(cfg.model, n_channels=datamodule.n_inputs, _convert_="all")
    target_index = [datamodule.columns.index(column) for column in datamodule.target_columns]
    return instantiate(
        cfg.task,
        model=model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.get("scheduler")),
        target_index=target_index,
        horizon=datamodule.horizon,
    )


def write_predictions(predictions: list[Tensor], datamodule: ForecastDataModule, output_dir: Path) -> pd.DataFrame:
    """predictions.csv (forecast on the original scale, one row per future timestamp) and predictions.png
    (the last lookback rows and the forecast of every target column)."""
    target_index = [datamodule.columns.index(column) for column in datamodule.target_columns]
    future = datamodule.future_index()
    forecast = datamodule.inverse_transform(torch.cat(predictions)[0].float())
    history = datamodule.inverse_transform(next(iter(datamodule.predict_dataloader()))[0][0][:, target_index])
    frame = pd.DataFrame(forecast.numpy(), index=future, columns=datamodule.target_columns)
    frame.to_csv(output_dir / "predictions.csv")
    past = pd.DataFrame(history.numpy(), index=history_index(future, len(history)), columns=datamodule.target_columns)
    plots.plot_forecast(past, frame, output_dir / "predictions.png")
    return frame


def history_index(future: pd.Index, length: int) -> pd.Index:
    """The `length` labels just before a forecast index: timestamps at its frequency, or step numbers."""
    if isinstance(future, pd.DatetimeIndex):
        return pd.date_range(end=future[0] - future.freq, periods=length, freq=future.freq, name=future.name)
    return pd.RangeIndex(future[0] - length, future[0], name=future.name)
