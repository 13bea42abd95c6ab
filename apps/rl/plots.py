"""returns_over_training.png: the normalised score of the validation rollouts against the training step."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from apps.common.plots import plt, save_figure


def plot_returns_over_training(history: pd.DataFrame, png: Path, data_score: float | None = None) -> Path:
    """One line per target return (columns step, target, score, score_std: one row per evaluation), the std
    over episodes shaded; a dashed line at the data set's mean score."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for target, rows in history.groupby("target"):
        ax.plot(rows["step"], rows["score"], marker="o", label=f"target {target:g}")
        ax.fill_between(rows["step"], rows["score"] - rows["score_std"], rows["score"] + rows["score_std"], alpha=0.2)
    if data_score is not None:
        ax.axhline(data_score, color="0.4", ls="--", lw=1, label="data set mean")
    ax.set(xlabel="training step", ylabel="normalised score", title="rollouts over training")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png)
