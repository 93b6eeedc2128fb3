"""The report's figures as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), not through pyplot: no
display is needed and the user's pyplot backend and state (e.g. in a notebook) are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def confusion_matrix_png(matrix: Sequence[Sequence[int]], label_names: list[str], path: Path) -> Path:
    matrix = np.asarray(matrix)
    size = max(3.5, 0.45 * len(label_names) + 2)
    fig, ax = _figure((size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=45, ha="right")
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(label_names) <= 20:
        for i in ticks:
            for j in ticks:
                dark = matrix[i, j] > matrix.max() / 2
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set_title("confusion matrix (test)")
    return _save(fig, path)


def roc_png(fpr: np.ndarray, tpr: np.ndarray, auroc: float, path: Path) -> Path:
    fig, ax = _figure((4.5, 4.5))
    ax.plot(fpr, tpr, label=f"model (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve (test)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def pr_png(recall: np.ndarray, precision: np.ndarray, auprc: float, base_rate: float, path: Path) -> Path:
    fig, ax = _figure((4.5, 4.5))
    ax.plot(recall, precision, label=f"model (AUPRC {auprc:.3f})")
    ax.axhline(base_rate, linestyle="--", color="grey", label=f"chance ({base_rate:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall curve (test)")
    ax.legend(loc="lower left")
    return _save(fig, path)


def reliability_png(curves: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> Path:
    """One line per entry of ``curves`` (e.g. before/after temperature scaling), from ``reliability_bins``."""
    fig, ax = _figure((4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for name, bins in curves.items():
        filled = bins["count"] > 0
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", label=name)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("reliability diagram (test)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def training_curve_png(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, x_label: str = "epoch"
) -> Path:
    """``series``: name -> (epochs or rounds, values); losses on the left axis, other metrics on the right."""
    fig, ax = _figure((6, 4))
    other = ax.twinx()
    for i, (name, (x, y)) in enumerate(series.items()):  # one colour cycle across both axes
        (ax if name.endswith("loss") or "loss_" in name else other).plot(x, y, "o-", color=f"C{i}", label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel("loss")
    other.set_ylabel("metric")
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + other.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="best", fontsize="small")
    ax.set_title("training curve")
    return _save(fig, path)


def bar_png(values: Mapping[str, float], title: str, xlabel: str, path: Path) -> Path:
    """Horizontal bars, largest on top; negative values in red."""
    items = sorted(values.items(), key=lambda kv: abs(kv[1]))
    fig, ax = _figure((6, max(2.5, 0.35 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color=["tab:red" if v < 0 else "tab:blue" for _, v in items])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def group_rates_png(by_group: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Selection rate, TPR and FPR per sensitive group."""
    names = list(by_group)
    metrics = ("selection_rate", "tpr", "fpr")
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = _figure((max(4.5, 1.2 * len(names) + 2), 3.5))
    for i, metric in enumerate(metrics):
        ax.bar(x + i * width, [by_group[n][metric] for n in names], width, label=metric)
    ax.set_xticks(x + width, names)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("rate (favorable outcome)")
    ax.set_title("fairness by group (test)")
    ax.legend(fontsize="small", loc="upper center", ncol=len(metrics))
    return _save(fig, path)


def residuals_png(y_true: np.ndarray, y_pred: np.ndarray, target: str, path: Path) -> Path:
    """Residual (prediction - target) against the prediction, and predicted against true with the identity line."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    fig = Figure(figsize=(9, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    alpha = 0.5 if y_true.size < 2000 else 0.2
    left.scatter(y_pred, y_pred - y_true, s=8, alpha=alpha)
    left.axhline(0, color="grey", linestyle="--")
    left.set_xlabel(f"predicted {target}")
    left.set_ylabel("residual (predicted - true)")
    left.set_title("residuals")
    right.scatter(y_true, y_pred, s=8, alpha=alpha)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    right.plot([low, high], [low, high], "--", color="grey", label="perfect")
    right.set_xlabel(f"true {target}")
    right.set_ylabel(f"predicted {target}")
    right.set_title("predicted vs true")
    right.legend(loc="upper left")
    return _save(fig, path)


def decile_png(rows: Sequence[Mapping[str, float]], path: Path) -> Path:
    """MAE bars and the bias line per decile of the true target (rows of ``error_by_decile``)."""
    fig, ax = _figure((6, 3.5))
    x = [r["decile"] for r in rows]
    ax.bar(x, [r["mae"] for r in rows], color="#4c72b0", label="MAE")
    ax.plot(x, [r["bias"] for r in rows], "o-", color="#dd8452", label="bias (pred - true)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("decile of the true target (1 = lowest)")
    ax.set_ylabel("error")
    ax.set_title("error by target decile")
    ax.legend()
    return _save(fig, path)
