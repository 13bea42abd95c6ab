"""ForecastDataModule: standardised sliding windows over one table (see sources.py), TSLib-compatible splits.

A window starting at row i gives x = rows [i, i + lookback) of the input columns and y = rows
[i + lookback, i + lookback + horizon) of the target columns. Splits follow TSLib: train [0, a),
val [a - lookback, b), test [b - lookback, c), so every val/test target row lies inside its split, and a split of
`rows` rows holds rows - lookback - horizon + 1 windows. The scaler (per-column mean and population std) is fit
on train rows only.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from pandas.tseries.frequencies import to_offset
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from apps.timeseries import sources

FEATURES = ("M", "S", "MS")
SPLITS = ("train", "val", "test")


class WindowDataset(Dataset):
    """Every window of one split. inputs: (rows, n_inputs), targets: (rows, n_outputs), both standardised.

    Item i is (x, y): x (lookback, n_inputs) = inputs[i : i + lookback],
    y (horizon, n_outputs) = targets[i + lookback : i + lookback + horizon].
    """

    def __init__(self, inputs: Tensor, targets: Tensor, lookback: int, horizon: int) -> None:
        self.inputs, self.targets, self.lookback, self.horizon = inputs, targets, lookback, horizon

    def __len__(self) -> int:
        return self.inputs.shape[0] - self.lookback - self.horizon + 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        end = i + self.lookback
        return self.inputs[i:end], self.targets[end : end + self.horizon]


class ForecastDataModule(L.LightningDataModule):
    """Windows of a named data set or CSV for multi-step forecasting.

    features: "M" all columns in and out; "S" the target only in and out; "MS" all columns in, the target out.
    The target is always the last input column (TSLib order), so under "MS" the output is input channel -1.

    After `setup()` (idempotent): n_inputs, n_outputs, columns (input columns), target_columns,
    split_rows (rows per split without the lookback overlap), num_windows (per split), freq (pandas frequency
    string, None without a date column), mean and std (float32 (n_inputs,), from the train split; a std of 0
    becomes 1). split_rows and num_windows are left None by setup("predict"), which only needs lookback rows.

    Loaders yield lists: train/val/test [x, y] with x (B, lookback, n_inputs) and y (B, horizon, n_outputs),
    float32 standardised; train shuffles; no loader drops a last partial batch. predict_dataloader yields one
    batch [x] of the last lookback rows, x (1, lookback, n_inputs); `future_index()` labels its horizon steps.

    state_dict()/load_state_dict() carry the scaler, columns, target, freq and the last timestamp, so a
    restored module predicts and inverts without the training data; a restored scaler is never refit.
    """

    def __init__(
        self,
        name: str = "weather",
        path: str | None = None,
        target: str | None = None,
        features: str = "M",
        lookback: int = 96,
        horizon: int = 96,
        batch_size: int = 32,
        num_workers: int = 0,
        fill: str = "error",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(
                f"features={features!r} is not one of M (all columns in and out), S (target only), "
                "MS (all columns in, target out); pass data.features=M, S or MS"
            )
        for key, value in {"lookback": lookback, "horizon": horizon, "batch_size": batch_size}.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}; pass e.g. data.{key}=96")
        if fill not in sources.FILLS:
            raise ValueError(f"fill={fill!r} is not one of {', '.join(sources.FILLS)}; pass e.g. data.fill=ffill")
        self.save_hyperparameters()
        self.name, self.path, self.target, self.features = sources.check_name(name), path, target, features
        self.lookback, self.horizon, self.batch_size, self.num_workers = lookback, horizon, batch_size, num_workers
        self.fill, self.cache_dir = fill, cache_dir
        self.columns: list[str] | None = None
        self.target_columns: list[str] | None = None
        self.n_inputs: int | None = None
        self.n_outputs: int | None = None
        self.split_rows: dict[str, int] | None = None
        self.num_windows: dict[str, int] | None = None
        self.freq: str | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._values: np.ndarray | None = None  # (rows, n_inputs) float64, original scale
        self._inputs: Tensor | None = None  # (rows, n_inputs) float32, standardised
        self._ends: tuple[int, int, int] | None = None
        self._last: str | None = None  # ISO timestamp of the last row
        self._num_rows: int | None = None

    def prepare_data(self) -> None:
        """Download the CSV into the cache when a downloadable data set has neither a path nor a cached copy."""
        if self.name in sources.REMOTE:
            sources.locate(self.name, self.path, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load the table once, check its length, fit the scaler on train rows unless one was restored."""
        if self._values is None:
            self._load()
        if stage == "predict":
            if self._num_rows < self.lookback:
                raise ValueError(f"the series has {self._num_rows} rows, fewer than lookback={self.lookback}")
        else:
            self._check_lengths()
        if self.mean is None:
            train = self._values[: self._ends[0]]
            std = train.std(axis=0)
            self.mean = torch.tensor(train.mean(axis=0), dtype=torch.float32)
            self.std = torch.tensor(np.where(std == 0, 1.0, std), dtype=torch.float32)
        if self._inputs is None:
            self._standardise()

    def _load(self) -> None:
        table = sources.load_table(self.name, self.path, self.cache_dir, self.fill)
        names = [str(c) for c in table.frame.columns]
        target = self.target if self.target is not None else table.target
        if target not in names:
            hint = sources.closest(target, names)
            raise ValueError(
                f"target {target!r} is not a column of {table.source}; its columns: {names}."
                + (f" Did you mean data.target={hint}?" if hint else "")
            )
        columns = [target] if self.features == "S" else [c for c in names if c != target] + [target]
        _check_columns(self.columns, columns)
        self.target = target
        self._set_columns(columns)
        self._values = table.frame[columns].to_numpy(dtype=np.float64)
        self._ends, self._num_rows = table.ends, len(table.frame)
        index = table.frame.index
        self.freq = _infer_freq(index) if isinstance(index, pd.DatetimeIndex) else None
        self._last = index[-1].isoformat() if isinstance(index, pd.DatetimeIndex) else None
        self.split_rows = dict(zip(SPLITS, np.diff((0,) + self._ends).tolist()))
        self.num_windows = {
            split: end - start - self.lookback - self.horizon + 1 for split, (start, end) in self._borders().items()
        }

    def _set_columns(self, columns: list[str]) -> None:
        self.columns = columns
        self.target_columns = columns if self.features == "M" else columns[-1:]
        self.n_inputs, self.n_outputs = len(self.columns), len(self.target_columns)

    def _borders(self) -> dict[str, tuple[int, int]]:
        """Rows [start, end) of each split, val and test starting lookback rows early (TSLib)."""
        a, b, c = self._ends
        return {"train": (0, a), "val": (a - self.lookback, b), "test": (b - self.lookback, c)}

    def _check_lengths(self) -> None:
        need = self.lookback + self.horizon
        for split, (start, end) in self._borders().items():
            if start < 0 or self.num_windows[split] < 1:
                overlap = "" if split == "train" else f" plus the {self.lookback}-row lookback overlap"
                raise ValueError(
                    f"series too short: the {split} split has {self.split_rows[split]} rows{overlap}, but "
                    f"lookback + horizon = {self.lookback} + {self.horizon} = {need} rows are needed for one window "
                    f"(the whole series has {self._num_rows} rows, split train/val/test = "
                    f"{'/'.join(map(str, self.split_rows.values()))}). "
                    "Use a smaller data.lookback / data.horizon or a longer series."
                )

    def _standardise(self) -> None:
        mean, std = self.mean.double().numpy(), self.std.double().numpy()
        self._inputs = torch.from_numpy(((self._values - mean) / std).astype(np.float32))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self._inputs is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        start, end = self._borders()[split]
        rows = self._inputs[start:end]
        targets = rows if self.features != "MS" else rows[:, -1:]
        dataset = WindowDataset(rows, targets, self.lookback, self.horizon)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=False,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """One batch [x], x (1, lookback, n_inputs): the last lookback rows of the whole series, standardised."""
        if self._inputs is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(TensorDataset(self._inputs[-self.lookback :].unsqueeze(0)), batch_size=1)

    def future_index(self) -> pd.Index:
        """The horizon labels after the last row: a DatetimeIndex at `freq`, or step numbers without dates."""
        if self._num_rows is None:
            raise RuntimeError("call setup() or load_state_dict() before future_index()")
        if self._last is None:
            return pd.RangeIndex(self._num_rows, self._num_rows + self.horizon, name="step")
        return pd.date_range(pd.Timestamp(self._last), periods=self.horizon + 1, freq=self.freq, name="date")[1:]

    def inverse_transform(self, y: Tensor) -> Tensor:
        """(..., n_outputs) standardised -> original scale of the target columns."""
        index = [self.columns.index(c) for c in self.target_columns]
        return y * self.std[index].to(y) + self.mean[index].to(y)

    def state_dict(self) -> dict[str, Any]:
        """Scaler and metadata, {} before setup. Tensors, strings and ints only: loads with weights_only=True."""
        if self.mean is None:
            return {}
        return {
            "features": self.features, "target": self.target, "columns": list(self.columns),
            "mean": self.mean.clone(), "std": self.std.clone(),
            "freq": self.freq, "last_timestamp": self._last, "num_rows": self._num_rows,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scaler and metadata; data already loaded is re-standardised with the restored scaler.
        The loaded data's own freq and last timestamp win over the stored ones (predicting on newer rows)."""
        if state_dict["features"] != self.features:
            stored = state_dict["features"]
            raise ValueError(f"the checkpoint used features={stored}, not data.features={self.features}")
        if self.target is not None and self.target != state_dict["target"]:
            raise ValueError(f"the checkpoint forecasts target {state_dict['target']!r}, not data.target={self.target}")
        _check_columns(state_dict["columns"], self.columns)
        self.target = state_dict["target"]
        self._set_columns(list(state_dict["columns"]))
        self.mean, self.std = state_dict["mean"].float().clone(), state_dict["std"].float().clone()
        if self._values is None:
            self.freq, self._last = state_dict["freq"], state_dict["last_timestamp"]
            self._num_rows = state_dict["num_rows"]
        else:
            self._standardise()


def _check_columns(stored: list[str] | None, found: list[str] | None) -> None:
    """ValueError when restored columns and the data's columns both exist and differ."""
    if stored is not None and found is not None and list(stored) != list(found):
        raise ValueError(
            f"the checkpoint was trained on columns {list(stored)} but the data has {list(found)}; "
            "pass data with the same columns (same data.features and data.target)"
        )


def _infer_freq(index: pd.DatetimeIndex) -> str | None:
    """pandas frequency string of the timestamps; with gaps, the most common step (e.g. "h"). None below 2 rows."""
    if len(index) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3 warns that infer_freq will return an offset
        freq = pd.infer_freq(index) if len(index) >= 3 else None
    step = freq if freq is not None else index.to_series().diff().mode().iloc[0]
    return to_offset(step).freqstr
