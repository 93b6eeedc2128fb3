"""Learning curves for ``finexp-report --curve``: the primary metric against training data, one line per strategy.

The x value of a run is any config key, metrics key or chosen option (``--x``); for the data-size keys a null value
means "all training rows" and is placed where the run's own record puts it: ``data.k_shot`` at the mean training
rows per class, ``data.train_size`` at the training rows, ``data.train_fraction`` at 1. Runs of one line that share an
x value (seeds) give the mean and a ± std band.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from finexp.runs_table import AGGREGATED, Run, differences, group_value, mean_std, number, primary, setting

SIZE_KEYS = ("data.k_shot", "data.train_size", "data.train_fraction")


def curve_x(run: Run, x: str) -> tuple[float | None, bool]:
    """The run's x value, and whether it stands for all the training rows (a null data-size key)."""
    value = number(group_value(run, x))
    if value is not None or x not in SIZE_KEYS:
        return value, False
    rows = (run.info.get("rows") or {}).get("train")
    labels = run.info.get("labels") or []
    if x == "data.train_fraction":
        return 1.0, True
    if rows is None:
        return None, True
    return (rows / len(labels) if x == "data.k_shot" and labels else float(rows)), True


def learning_curve(runs: list[Run], by: str, x: str) -> pd.DataFrame:
    """One row per (line, x): mean ± std of the primary metric over the runs there (seeds, folds).

    Lines are the values of ``by``; runs of one ``by`` value that differ in another setting (not ``x``, the seed or
    the fold) become separate lines named by what differs, as in the report's table.
    """
    completed = [r for r in runs if r.status == "completed"]
    groups: dict[str, list[Run]] = {}
    for run in completed:
        groups.setdefault(str(group_value(run, by)), []).append(run)
    rows = []
    for name, members in groups.items():
        differing = [k for k in differences(members) if k != x and k not in AGGREGATED]
        points: dict[tuple[str, float, bool], list[Run]] = {}
        for run in members:
            value, is_all = curve_x(run, x)
            if value is None:
                continue
            values = setting(run)
            label = ", ".join(f"{k}={values.get(k)}" for k in differing)
            line = f"{name} ({label})" if label else name
            points.setdefault((line, round(value, 6), is_all), []).append(run)
        for (line, value, is_all), subset in points.items():
            mean, std, n = mean_std(primary(r)[1] for r in subset)
            metric = " / ".join(sorted({primary(r)[0] for r in subset}))
            rows.append({by: line, x: value, "all": is_all, "metric": metric, "mean": mean, "std": std, "runs": n})
    frame = pd.DataFrame(rows, columns=[by, x, "all", "metric", "mean", "std", "runs"])
    return frame.sort_values([by, x]).reset_index(drop=True)


def curve_markdown(curve: pd.DataFrame, by: str, x: str) -> str:
    """The curve as a table: one row per x value, one column per line (mean ± std, runs)."""
    if curve.empty:
        return "No completed runs with a numeric x value.\n"
    lines = sorted(curve[by].unique())
    out = [f"| {x} | " + " | ".join(lines) + " |", "|---|" + "---|" * len(lines)]
    for (value, is_all), points in curve.groupby([x, "all"], sort=True):
        label = f"all ({value:g})" if is_all else f"{value:g}"
        cells = []
        for line in lines:
            point = points[points[by] == line]
            if point.empty:
                cells.append("—")
                continue
            row: dict[str, Any] = point.iloc[0].to_dict()
            std = "" if math.isnan(row["std"]) else f" ± {row['std']:.4f}"
            cells.append(f"{row['mean']:.4f}{std} (n={row['runs']})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot_curve(curve: pd.DataFrame, by: str, x: str, path: str, scale: str = "auto") -> None:
    """Mean per x as a line with a ± std band per ``by`` value; log x axis unless ``scale="linear"``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for line, points in curve.groupby(by, sort=True):
        points = points.sort_values(x)
        std = points["std"].fillna(0.0)
        (drawn,) = ax.plot(points[x], points["mean"], marker="o", label=str(line))
        ax.fill_between(points[x], points["mean"] - std, points["mean"] + std, alpha=0.2, color=drawn.get_color())
    if scale == "log" or (scale == "auto" and len(curve) and (curve[x] > 0).all()):
        ax.set_xscale("log")
    ticks = curve.drop_duplicates(x).sort_values(x)
    ax.set_xticks(ticks[x].tolist())
    ax.set_xticklabels([f"all\n({v:g})" if a else f"{v:g}" for v, a in zip(ticks[x], ticks["all"], strict=True)])
    ax.minorticks_off()
    metrics = sorted(set(curve["metric"])) if len(curve) else []
    ax.set_xlabel(x)
    ax.set_ylabel(" / ".join(metrics) or "primary metric")
    ax.set_title(f"learning curve by {by} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
