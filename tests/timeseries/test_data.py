"""ForecastDataModule: TSLib splits and windows, scaler on train rows only, bad input, checkpoint state."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apps.timeseries import sources
from apps.timeseries.data import ForecastDataModule

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "timeseries"
ETT = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
needs_data = pytest.mark.skipif(not (DATA / "ETTh1.csv").is_file(), reason=f"no real data sets under {DATA}")


def ett_scaled() -> np.ndarray:
    """ETTh1 standardised with numpy statistics of rows [0, 8640): (17420, 7)."""
    values = pd.read_csv(DATA / "ETTh1.csv")[ETT].to_numpy()
    train = values[:8640]
    return (values - train.mean(0)) / train.std(0)


def count_windows(loader) -> int:
    return sum(x.shape[0] for x, _ in loader)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network."""

    def refuse(url: str, file: Path) -> None:
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(sources, "_download", refuse)


@pytest.fixture
def etth1() -> ForecastDataModule:
    dm = ForecastDataModule("etth1", path=str(DATA))
    dm.setup()
    return dm


def write_csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    file = tmp_path / "series.csv"
    frame.to_csv(file, index=False)
    return str(file)


def test_weather_default_loads_offline_with_train_only_scaler():
    dm = ForecastDataModule(lookback=48, horizon=24)
    dm.setup()
    assert dm.columns[-1] == "temp_air" and 6 <= dm.n_inputs <= 8 and dm.n_outputs == dm.n_inputs
    assert dm.split_rows == {"train": 6132, "val": 876, "test": 1752} and dm.freq == "h"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 48, dm.n_inputs) and y.shape == (32, 24, dm.n_outputs)
    assert x.dtype == y.dtype == torch.float32
    values = sources.load_table("weather").frame[dm.columns].to_numpy()
    np.testing.assert_allclose(dm.mean.numpy(), values[:6132].mean(0), rtol=1e-5)
    np.testing.assert_allclose(dm.std.numpy(), values[:6132].std(0), rtol=1e-5)
    assert not np.allclose(dm.mean.numpy(), values.mean(0), rtol=1e-3)


@needs_data
def test_etth1_tslib_borders_and_every_test_window(etth1):
    assert etth1.split_rows == {"train": 8640, "val": 2880, "test": 2880}
    borders = {"train": (0, 8640), "val": (8640 - 96, 11520), "test": (11520 - 96, 14400)}
    expected = {split: (end - start) - 96 - 96 + 1 for split, (start, end) in borders.items()}
    assert expected == {"train": 8449, "val": 2785, "test": 2785}
    assert etth1.num_windows == expected
    assert count_windows(etth1.test_dataloader()) == 2785
    assert count_windows(etth1.val_dataloader()) == 2785
    x, y = next(iter(etth1.test_dataloader()))
    scaled = ett_scaled()
    np.testing.assert_allclose(x[0].numpy(), scaled[11520 - 96 : 11520], atol=1e-5)
    np.testing.assert_allclose(y[0].numpy(), scaled[11520 : 11520 + 96], atol=1e-5)


@needs_data
def test_exchange_split_follows_70_10_20():
    dm = ForecastDataModule("exchange", path=str(DATA / "exchange_rate.csv"), lookback=96, horizon=24)
    dm.setup()
    n = 7588
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    assert dm.split_rows == {"train": num_train, "val": n - num_train - num_test, "test": num_test}
    assert dm.columns[-1] == "7" and dm.n_inputs == 8 and dm.freq is None
    assert count_windows(dm.test_dataloader()) == num_test + 96 - 96 - 24 + 1


@needs_data
@pytest.mark.parametrize("features, n_inputs", [("S", 1), ("MS", 7)])
def test_univariate_target_shapes(features, n_inputs):
    dm = ForecastDataModule("etth1", path=str(DATA), features=features, lookback=96, horizon=48)
    dm.setup()
    assert (dm.n_inputs, dm.n_outputs, dm.target_columns) == (n_inputs, 1, ["OT"])
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 96, n_inputs) and y.shape == (32, 48, 1)
    np.testing.assert_allclose(y[0, :, 0].numpy(), ett_scaled()[8640 : 8640 + 48, -1], atol=1e-5)


@needs_data
def test_inverse_transform_round_trip(etth1):
    _, y = next(iter(etth1.val_dataloader()))
    raw = pd.read_csv(DATA / "ETTh1.csv")[ETT].to_numpy()
    np.testing.assert_allclose(etth1.inverse_transform(y)[0].numpy(), raw[8640 : 8640 + 96], rtol=1e-4, atol=1e-4)


@needs_data
def test_predict_batch_and_future_index_continue_hourly(etth1):
    (x,) = next(iter(etth1.predict_dataloader()))
    assert x.shape == (1, 96, 7)
    np.testing.assert_allclose(x[0].numpy(), ett_scaled()[-96:], atol=1e-5)
    future = etth1.future_index()
    assert isinstance(future, pd.DatetimeIndex) and len(future) == 96 and etth1.freq == "h"
    last = pd.Timestamp(pd.read_csv(DATA / "ETTh1.csv")["date"].iloc[-1])
    assert future[0] == last + pd.Timedelta(hours=1) and (np.diff(future.asi8) == np.diff(future.asi8)[0]).all()


@needs_data
def test_state_dict_round_trip_without_raw_data(etth1, tmp_path):
    torch.save(etth1.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    restored = ForecastDataModule("etth1", path=str(tmp_path / "absent"))
    restored.load_state_dict(state)
    assert (restored.columns, restored.target_columns, restored.n_inputs, restored.freq) == (ETT, ETT, 7, "h")
    assert torch.equal(restored.mean, etth1.mean) and torch.equal(restored.std, etth1.std)
    assert restored.future_index().equals(etth1.future_index())
    y = torch.randn(2, 96, 7)
    assert torch.allclose(restored.inverse_transform(y), etth1.inverse_transform(y))


@needs_data
@pytest.mark.parametrize("setup_first", [False, True])
def test_restored_scaler_is_not_refit(etth1, setup_first):
    state = etth1.state_dict()
    state["mean"] = state["mean"] + 1
    dm = ForecastDataModule("etth1", path=str(DATA))
    if setup_first:  # Lightning runs setup() before restoring a checkpoint
        dm.setup()
    dm.load_state_dict(state)
    dm.setup()
    assert torch.equal(dm.mean, state["mean"])
    x, _ = next(iter(dm.test_dataloader()))
    x_fit, _ = next(iter(etth1.test_dataloader()))
    torch.testing.assert_close(x, x_fit - 1 / etth1.std)


@pytest.mark.parametrize("date_name", ["timestamp", "when"])
def test_csv_date_column_detected(tmp_path, date_name):
    dates = pd.date_range("2024-01-01", periods=200, freq="D")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({date_name: dates.strftime("%Y-%m-%d"), "a": rng.normal(size=200), "b": rng.normal(size=200)})
    path = write_csv(tmp_path, frame)
    dm = ForecastDataModule("csv", path=path, lookback=10, horizon=5)
    dm.setup()
    assert dm.columns == ["a", "b"] and dm.freq == "D" and dm.split_rows == {"train": 140, "val": 20, "test": 40}
    assert list(dm.future_index()) == list(pd.date_range("2024-07-19", periods=5, freq="D"))


def test_csv_without_date_column(tmp_path):
    path = write_csv(tmp_path, pd.DataFrame({"x": np.arange(100.0), "y": np.arange(100.0) ** 0.5}))
    dm = ForecastDataModule("csv", path=path, target="x", features="MS", lookback=8, horizon=4)
    dm.setup()
    assert dm.freq is None and dm.columns == ["y", "x"] and dm.target_columns == ["x"]
    assert dm.future_index().equals(pd.RangeIndex(100, 104, name="step"))


def test_csv_missing_values_error_then_fill(tmp_path):
    values = np.arange(60.0)
    values[[5, 6]] = np.nan
    path = write_csv(tmp_path, pd.DataFrame({"a": values, "b": np.ones(60) * 2}))
    with pytest.raises(ValueError, match=r"'a': 2.*data\.fill=ffill.*interpolate"):
        ForecastDataModule("csv", path=path, lookback=4, horizon=2).setup()
    for fill, filled in [("ffill", 4.0), ("interpolate", 5.0)]:
        dm = ForecastDataModule("csv", path=path, target="a", features="S", lookback=4, horizon=2, fill=fill)
        dm.setup()
        x, _ = dm.train_dataloader().dataset[2]
        assert torch.isfinite(x).all()
        assert dm.inverse_transform(x[-1]).item() == pytest.approx(filled)


def test_csv_misspelt_target_lists_columns_and_suggests(tmp_path):
    path = write_csv(tmp_path, pd.DataFrame({"temperature": np.arange(50.0), "wind": np.arange(50.0)}))
    with pytest.raises(ValueError, match=r"\['temperature', 'wind'\].*data\.target=temperature"):
        ForecastDataModule("csv", path=path, target="temprature", lookback=4, horizon=2).setup()


def test_csv_non_numeric_column_named(tmp_path):
    path = write_csv(tmp_path, pd.DataFrame({"a": np.arange(50.0), "city": ["Oslo"] * 50}))
    with pytest.raises(ValueError, match=r"non-numeric columns 'city'"):
        ForecastDataModule("csv", path=path, lookback=4, horizon=2).setup()


def test_csv_too_short_says_lengths(tmp_path):
    path = write_csv(tmp_path, pd.DataFrame({"a": np.arange(150.0)}))
    with pytest.raises(ValueError, match=r"series too short: the train split has 105 rows.*96 \+ 96 = 192.*150 rows"):
        ForecastDataModule("csv", path=path).setup()


def test_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"known: weather, etth1, etth2, exchange, csv.*data\.name=etth1"):
        ForecastDataModule("ethh1")
    with pytest.raises(ValueError, match="M, S or MS"):
        ForecastDataModule(features="SM")
    with pytest.raises(ValueError, match="lookback must be a positive integer"):
        ForecastDataModule(lookback=0)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        ForecastDataModule(horizon=-1)
    with pytest.raises(FileNotFoundError, match="data.path="):
        ForecastDataModule("csv", path=str(tmp_path / "absent.csv")).setup()
    with pytest.raises(FileNotFoundError, match="data.path="):
        ForecastDataModule("etth1", path=str(tmp_path)).setup()


def test_offline_without_path_says_where_to_put_the_file(tmp_path):
    where = re.escape(f"{tmp_path / 'ETTh2.csv'} or pass data.path=/path/to/ETTh2.csv")
    with pytest.raises(FileNotFoundError, match=where):
        ForecastDataModule("etth2", cache_dir=str(tmp_path)).setup()
