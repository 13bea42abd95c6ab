"""PNG plots for run directories (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig: plt.Figure, png: Path) -> Path:
    """Lay the figure out, write it to `png` and close it; returns `png` (every app's plots end here)."""
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_loss_curves(metrics_csv: Path, png: Path) -> Path:
    """Training loss per step and per epoch and validation loss per epoch, from a CSVLogger metrics.csv."""
    log = pd.read_csv(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"train/loss_step": dict(alpha=0.4), "train/loss_epoch": dict(marker="o"), "val/loss": dict(marker="s")}
    for column, style in styles.items():
        if column in log:
            rows = log[["step", column]].dropna()
            ax.plot(rows["step"], rows[column], label=column, **style)
    ax.set(xlabel="step", ylabel="loss", title="loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png)


def plot_per_step_error(errors: pd.DataFrame, png: Path, title: str) -> Path:
    """One line per error column (e.g. mse, mae) against the forecast step in the index."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in errors.columns:
        ax.plot(errors.index, errors[column], label=column)
    ax.set(xlabel=errors.index.name or "step", ylabel="error", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png)


def plot_windows(history: np.ndarray, truth: np.ndarray, forecast: np.ndarray, png: Path, title: str) -> Path:
    """One panel per window: history (n, L), then truth and forecast (n, H) on steps after it."""
    n, lookback = history.shape
    steps_after = np.arange(lookback, lookback + truth.shape[1])
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(np.arange(lookback), history[i], color="0.3", label="history")
        ax.plot(steps_after, truth[i], color="tab:blue", label="truth")
        ax.plot(steps_after, forecast[i], color="tab:orange", label="forecast")
        ax.axvline(lookback - 0.5, color="0.6", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="upper left", fontsize="small")
    axes[-1, 0].set_xlabel("time step in window")
    return save_figure(fig, png)


def plot_forecast(history: pd.DataFrame, forecast: pd.DataFrame, png: Path) -> Path:
    """One panel per column: its history and the forecast that follows, against their index (time)."""
    columns = list(forecast.columns)
    fig, axes = plt.subplots(len(columns), 1, figsize=(9, 2.2 * len(columns)), squeeze=False, sharex=True)
    for column, ax in zip(columns, axes[:, 0]):
        ax.plot(history.index, history[column], color="0.3", label="history")
        ax.plot(forecast.index, forecast[column], color="tab:orange", label="forecast")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("forecast beyond the end of the data")
    axes[0, 0].legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    return save_figure(fig, png)
