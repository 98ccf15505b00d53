"""Training curves and the confusion matrix as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Accuracy and loss per epoch, train and validation, as the lecture plots them."""
    epochs = [h["epoch"] for h in history]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("accuracy", "accuracy"), ("val_accuracy", "val_accuracy")):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    for key, label in (("loss", "loss"), ("val_loss", "val_loss")):
        loss_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    acc_ax.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy")
    loss_ax.set(xlabel="Epoch", ylabel="Loss", title="Loss")
    for ax in (acc_ax, loss_ax):
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    """Rows are true classes, columns predicted; each cell shows its count."""
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(confusion, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix (test split)")
    peak = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mistakes(
    images: np.ndarray, mistakes: list[dict[str, Any]], path: Path, columns: int = 8
) -> None:
    """The test images the model got wrong with the most confidence, each titled
    'true -> predicted (confidence)': where it fails, at a glance."""
    rows = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes, strict=False):
        ax.imshow(images[m["index"]], interpolation="nearest")
        ax.set_title(f"{m['true']}\n-> {m['predicted']} ({m['confidence']:.2f})", fontsize=7, pad=2)
    fig.suptitle("Most confident mistakes on the test split (true -> predicted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_time(
    runs: list[tuple[str, list[dict[str, float]], float]], path: Path
) -> None:
    """Validation accuracy against the cumulative wall time of the epochs, one line per run
    (label, history, test accuracy): the chart that compares recipes of different speeds."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (label, history, test_accuracy) in enumerate(runs):
        minutes = np.cumsum([h["seconds"] for h in history]) / 60
        # past the colour cycle's ten colours, dashed lines keep the runs apart
        style = "-" if index < 10 else "--"
        line = ax.plot(
            minutes, [h["val_accuracy"] for h in history], style, marker="o", label=label
        )
        ax.scatter([minutes[-1]], [test_accuracy], marker="*", s=160, color=line[0].get_color())
    ax.set(
        xlabel="wall time of the epochs (minutes)",
        ylabel="validation accuracy (star: test accuracy)",
        title="Accuracy against wall time",
    )
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(
    before: list[dict[str, float]],
    after: list[dict[str, float]],
    ece_before: float,
    ece_after: float,
    path: Path,
) -> None:
    """Accuracy against mean confidence per probability bin, before and after temperature
    scaling (empty bins left out), on the diagonal where a model means what it says."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for bins, label, ece in ((before, "before (T = 1)", ece_before), (after, "after", ece_after)):
        rows = [b for b in bins if b["count"]]
        ax.plot(
            [b["mean_confidence"] for b in rows],
            [b["accuracy"] for b in rows],
            marker="o",
            label=f"{label}, ECE {ece:.4f}",
        )
    ax.set(
        xlabel="mean top-1 probability in the bin",
        ylabel="accuracy in the bin",
        title="Reliability on the test split",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
