"""The trust report of a regression run: error metrics, a residual plot and the error by target decile.

A model that is accurate on average can still be wrong where it matters (e.g. it under-prices the riskiest loans);
the decile table shows where along the target range the errors and the bias sit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from finexp.analysis.model_card import Section, table, write_report
from finexp.analysis.pipeline import log_images, run_sections
from finexp.analysis.plots import decile_png, residuals_png
from finexp.records import write_json

log = logging.getLogger("finexp")


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need as many predictions as targets (got {y_pred.size} and {y_true.size}), at least one")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("targets and predictions must be finite numbers")
    return y_true, y_pred


@torch.inference_mode()
def predict_targets(module: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, predictions)`` of every row of ``loader`` in dataset order, on the target's original scale.

    ``module`` maps ``(input_ids, attention_mask[, features])`` to one prediction per row (a RegressionModule).
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    index, predictions, targets = [], [], []
    try:
        for batch in loader:
            fused = [batch["features"].to(device)] if "features" in batch else []  # model.fusion: numeric columns
            predictions.append(module(batch["input_ids"].to(device), batch["attention_mask"].to(device), *fused).cpu())
            index.append(batch["index"])
            targets.append(batch["labels"].float())
    finally:
        module.train(was_training)
    if not index:
        return np.zeros(0), np.zeros(0)
    order = torch.cat(index).argsort()
    return torch.cat(targets)[order].numpy(), torch.cat(predictions).float()[order].numpy()


def regression_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² (1 - SS_res / SS_tot; 0 for a constant target predicted exactly) and mean bias (pred - true)."""
    y_true, y_pred = _check(y_true, y_pred)
    residual = y_pred - y_true
    ss_res = float((residual**2).sum())
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {
        "mae": float(np.abs(residual).mean()),
        "rmse": float(np.sqrt((residual**2).mean())),
        "r2": r2,
        "bias": float(residual.mean()),
    }


def error_by_decile(y_true: np.ndarray, y_pred: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Rows grouped by the quantile bin of their *true* target: count, target range, MAE, RMSE and bias per bin.

    Ties in the target keep equal values in one bin, so with few distinct values there are fewer than ``n_bins``
    rows.
    """
    y_true, y_pred = _check(y_true, y_pred)
    edges = np.unique(np.quantile(y_true, np.linspace(0, 1, n_bins + 1)))
    # bin i holds edges[i] <= y < edges[i + 1]; the top edge belongs to the last bin
    bins = np.clip(np.searchsorted(edges, y_true, side="right") - 1, 0, max(0, len(edges) - 2))
    rows = []
    for b in np.unique(bins):
        member = bins == b
        residual = y_pred[member] - y_true[member]
        rows.append(
            {
                "decile": int(b) + 1,
                "rows": int(member.sum()),
                "target_from": float(y_true[member].min()),
                "target_to": float(y_true[member].max()),
                "mae": float(np.abs(residual).mean()),
                "rmse": float(np.sqrt((residual**2).mean())),
                "bias": float(residual.mean()),
            }
        )
    return rows


def analyze_regression(
    out: str | Path,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    target: str,
    split: str = "test",
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
    loggers: list[Any] | None = None,
    title: str = "finexp run report",
    rows_per_split: dict[str, int] | None = None,
    fingerprints: dict[str, str] | None = None,
) -> dict[str, float]:
    """Write ``analysis.json``, ``residuals.png``, ``error_by_decile.png`` and ``report.md/.html`` for a regression run.

    Args:
        out: the run directory.
        y_true: the targets of ``split`` (original units).
        y_pred: the model's predictions of them (original units).
        target: the target column's name (axis labels).
        split: which split the numbers describe.
        config: the run's resolved config as plain containers (model card sections); None leaves them out.
        metrics: the run's final metrics (parameters, fit time, privacy spend).
        command: the command line that reproduces the run.
        loggers: Lightning loggers; W&B ones get the figures as images.
        title: the report's heading.
        rows_per_split: rows in each split, for the data section.
        fingerprints: data fingerprints of the splits, for the data section.

    Returns:
        Headline numbers for metrics.json: ``{split}/bias`` and ``{split}/worst_decile_mae``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = regression_summary(y_true, y_pred)
    deciles = error_by_decile(y_true, y_pred)
    residuals_png(y_true, y_pred, target, out / "residuals.png")
    decile_png(deciles, out / "error_by_decile.png")

    sections: list[Section] = []
    if config is not None:
        rows, prints = rows_per_split or {}, fingerprints or {}
        header = run_sections(config, [target], {s: [n] for s, n in rows.items()}, prints, metrics or {}, command)
        task, data = config["task"], config["data"]
        split_rows = [{"split": s, "rows": n, "fingerprint": f"`{prints.get(s, '')[:16]}`"} for s, n in rows.items()]
        body = [
            f"**{task.get('name')}** — {task.get('description') or 'regression'}",
            "",
            f"Source: `{data.get('rdataset') or data.get('path') or data.get('train_path')}`; target: `{target}` "
            "(regression).",
            "",
            table(split_rows),
        ]
        sections += [Section("Task and data", "\n".join(body)), *header[1:]]
    body = [
        f"On the **{split}** split ({len(np.ravel(y_true))} rows), in the target's units:",
        "",
        table([summary]),
        "",
        "Bias is the mean of (predicted - true): positive means the model over-predicts on average.",
    ]
    sections.insert(min(2, len(sections)), Section("Errors", "\n".join(body), ["residuals.png"]))
    worst = max(deciles, key=lambda r: r["mae"])
    body = [
        "Rows grouped by the decile of their true target (1 = lowest values). A bias that changes sign across "
        "deciles is regression to the mean: the model pulls extreme cases toward the average.",
        "",
        table(deciles),
        "",
        f"Largest error: decile {worst['decile']} (target {worst['target_from']:.4g} to {worst['target_to']:.4g}), "
        f"MAE {worst['mae']:.4g}.",
    ]
    sections.insert(min(3, len(sections)), Section("Error by target decile", "\n".join(body), ["error_by_decile.png"]))
    sections = [s for s in sections if s.title != "Reproduce"] + [s for s in sections if s.title == "Reproduce"]

    results = {"split": split, "target": target, "regression": summary, "error_by_decile": deciles}
    write_json(out / "analysis.json", json.loads(json.dumps(results)))
    write_report(out, title, sections)
    if loggers:
        log_images(loggers, out, ["residuals.png", "error_by_decile.png"])
    log.info("report written: %s", out / "report.html")
    return {f"{split}/bias": summary["bias"], f"{split}/worst_decile_mae": worst["mae"]}
