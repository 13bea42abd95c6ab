"""Confusion-matrix PNG (matplotlib Agg backend through apps.common.plots)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.common.plots import plt, save_figure


def plot_confusion_matrix(counts: np.ndarray, classes: list[str], png: Path, title: str = "test confusion matrix") -> Path:
    """counts (C, C): row = true class, column = predicted class; cells show the share of each row (recall)."""
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * len(classes) + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=60, ha="right", fontsize="small")
        ax.set_yticks(ticks, classes, fontsize="small")
        for (row, column), share in np.ndenumerate(shares):
            if counts[row, column]:
                ax.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if share > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, png)
