"""Report figures as PNG data URIs (matplotlib, Agg), so an HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a pod or in CI; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
BEST_COLOUR, LAST_COLOUR = "#1b7837", "#b2182b"


def png_data_uri(figure) -> str:
    """The figure as a base64 PNG data URI; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves(history: list[dict[str, float]], monitor: str, best_step: int | None, last_step: int | None) -> str | None:
    """Losses (left) and every other validation metric (right) over optimizer steps, best and last steps marked.

    None when the history is empty (no validation ran).
    """
    if not history:
        return None
    steps = [row["step"] for row in history]
    names = [k for k in history[0] if k not in ("step", "epoch", "lr") and isinstance(history[0][k], (int, float))]
    losses = [k for k in names if k.endswith("loss")]
    others = [k for k in names if k not in losses]
    panels = [group for group in (losses, others) if group]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    for axis, group in zip(axes[0], panels):
        for name in group:
            values = [row.get(name, math.nan) for row in history]
            axis.plot(steps, values, marker="o", markersize=3, linewidth=2.2 if name == monitor else 1.3,
                      label=f"{name} (monitored)" if name == monitor else name)
        if best_step is not None:
            axis.axvline(best_step, color=BEST_COLOUR, linestyle="--", linewidth=1, label=f"best step {best_step}")
        if last_step is not None and last_step != best_step:
            axis.axvline(last_step, color=LAST_COLOUR, linestyle=":", linewidth=1, label=f"last step {last_step}")
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    axes[0][0].set_title("loss")
    if len(panels) == 2:
        axes[0][1].set_title("validation metrics")
    return png_data_uri(figure)


def confusion_heatmap(matrix: list[list[int]], names: list[str], title: str) -> str:
    """Counts annotated on a row-normalised heatmap (colour = share of the true class)."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(1.0 + 0.45 * len(names), 12.0)
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title)
    if len(names) <= 25:
        for row in range(len(names)):
            for column in range(len(names)):
                value = int(counts[row, column])
                axis.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if shares[row, column] > 0.6 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    return png_data_uri(figure)


def roc_plot(fpr: list[float], tpr: list[float], label: str) -> str:
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.plot(fpr, tpr, color=BEST_COLOUR, linewidth=1.8, label=label)
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    return png_data_uri(figure)


def interval_bars(rows: list[tuple[str, float, float | None, float | None]], ylabel: str) -> str:
    """One bar per (name, value, low, high); error bars where an interval exists."""
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.4))
    positions = np.arange(len(rows))
    values = [row[1] for row in rows]
    axis.bar(positions, values, color=["#4393c3", LAST_COLOUR, "#999999", "#92c5de"][: len(rows)])
    for index, (_, value, low, high) in enumerate(rows):
        if low is not None and high is not None:
            axis.errorbar(index, value, yerr=[[value - low], [high - value]], color="black", capsize=5)
        axis.text(index, value / 2, f"{value:.4g}", ha="center", va="center", fontsize=9, color="white")
    axis.set_xticks(positions, [row[0] for row in rows], fontsize=8)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)
    return png_data_uri(figure)


def predicted_vs_true(predictions: Any, targets: Any, names: list[str]) -> str:
    """One scatter per target (at most four): prediction against truth, with the identity line."""
    shown = names[:4]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    for index, (axis, name) in enumerate(zip(axes[0], shown)):
        truth, predicted = np.asarray(targets[:, index]), np.asarray(predictions[:, index])
        axis.scatter(truth, predicted, s=10, alpha=0.6, color="#2166ac")
        bounds = [min(truth.min(), predicted.min()), max(truth.max(), predicted.max())]
        axis.plot(bounds, bounds, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel(f"true {name}")
        axis.set_ylabel(f"predicted {name}")
        axis.grid(alpha=0.3)
    return png_data_uri(figure)
