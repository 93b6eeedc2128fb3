"""``finexp-report``: a sweep's runs -> one table and one figure (``report.md``, ``report.csv``, ``report.png``).

    finexp-report outputs/credit_scoring/multiruns/2026-11-29/08-00-00
    finexp-report outputs/ --by privacy.epsilon --x privacy.epsilon
    finexp-report outputs/ --by model --x time/epoch_s
    finexp-report outputs/sentiment/multiruns/<date>/<time> --by method --x data.k_shot --curve   # learning curve

Every directory below the given one that holds ``run_info.json`` or ``error.json`` is a run. A run with
``metrics.json`` completed; one with ``error.json`` failed; one with neither is unfinished (still running, or killed).
Completed runs are grouped by ``--by`` (a config group's chosen option such as ``adapter``, or any dotted config key
such as ``privacy.epsilon``); runs of a group that differ only in ``seed`` or ``data.cv.fold`` are aggregated as
mean ± std, and runs that differ in anything else become separate rows named by what differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from finexp import FinexpError

AGGREGATED = ("seed", "data.cv.fold")  # runs differing only in these are repetitions of one setting
IGNORED_PREFIXES = ("paths.", "hydra.", "ckpt_path", "run_name", "tags")  # where a run writes, not what it does
COSTS = {  # report column -> metrics.json key
    "trainable_pct": "params/trainable_pct",
    "trainable_params": "params/trainable",
    "epoch_s": "time/epoch_s",
    "samples_per_s": "throughput/train_samples_per_s",
    "peak_memory_mb": "memory/peak_mb",
    "checkpoint_mb": "checkpoint/size_mb",
}
DEFAULT_X = "params/trainable"


@dataclass
class Run:
    """One run directory and what it left behind."""

    path: Path
    status: str  # completed | failed | unfinished
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True) if isinstance(node, list) else node}


def find_runs(root: str | Path) -> list[Run]:
    """Every run below ``root`` (including ``root`` itself), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FinexpError(f"{root}: not a directory")
    directories = {p.parent for name in ("run_info.json", "error.json") for p in root.rglob(name)}
    runs = []
    for directory in sorted(directories):
        metrics = _read_json(directory / "metrics.json")
        error = _read_json(directory / "error.json")
        config_path = directory / "config.yaml"
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_path)) if config_path.is_file() else {}
        except Exception:  # a half-written config: the run is still listed, by its status
            config = {}
        if error:
            status = "failed"
        elif metrics.get("status", "completed") == "completed" and metrics:
            status = "completed"
        else:
            status = "unfinished"
        message = f"{error.get('type', 'error')}: {error.get('error', '')}" if error else ""
        runs.append(Run(directory, status, metrics, _read_json(directory / "run_info.json"), config, message))
    return runs


def group_value(run: Run, by: str) -> Any:
    """The run's value of ``by``: a chosen option (``adapter``, ``model``, ...) or a dotted config key."""
    choices = run.info.get("choices") or {}
    if by in choices:
        value = choices[by]
        model = run.config.get("model", {})
        if by == "adapter" and model.get("kind") == "baseline":  # a baseline has no adapter: name the model
            return f"{choices.get('model', model.get('name'))} (baseline)"
        return value
    flat = _flatten(run.config)
    if by in flat:
        return flat[by]
    if by in run.metrics:
        return run.metrics[by]
    return None


def _setting(run: Run) -> dict[str, Any]:
    """The run's config as flat key -> value, without where it wrote."""
    flat = _flatten(run.config)
    own = [p for p in (flat.get("paths.output_dir"), str(run.path)) if p]  # values under the run's own directory

    def where(value: Any) -> bool:
        return isinstance(value, str) and any(p in value for p in own)

    return {k: v for k, v in flat.items() if not k.startswith(IGNORED_PREFIXES) and not where(v)}


def _differences(runs: list[Run]) -> list[str]:
    """Keys whose values differ among ``runs``, other than the seed and CV fold (and values copied from the seed)."""
    settings = [_setting(r) for r in runs]
    keys = sorted(set().union(*settings))
    varying = []
    for key in keys:
        values = [s.get(key) for s in settings]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1 or key in AGGREGATED:
            continue
        if all(s.get(key) == s.get("seed") for s in settings):  # e.g. model.estimator.seed: ${seed}
            continue
        varying.append(key)
    return varying


def _primary(run: Run) -> tuple[str, float | None]:
    monitor = run.metrics.get("monitor") or run.info.get("monitor") or "val/loss"
    test = monitor.replace("val/", "test/", 1)
    for key in (test, monitor):
        value = run.metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return key, float(value)
    return test, None


def _mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return math.nan, math.nan, 0
    std = float(np.std(clean, ddof=1)) if len(clean) > 1 else math.nan
    return float(np.mean(clean)), std, len(clean)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize(runs: list[Run], by: str = "adapter", x: str = DEFAULT_X) -> pd.DataFrame:
    """One row per setting: mean ± std of the primary metric over seeds/folds, and the mean costs."""
    completed = [r for r in runs if r.status == "completed"]
    groups: dict[str, list[Run]] = {}
    for run in completed:
        groups.setdefault(str(group_value(run, by)), []).append(run)
    rows = []
    for name, members in groups.items():
        differing = _differences(members)
        subgroups: dict[str, list[Run]] = {}
        for run in members:
            setting = _setting(run)
            label = ", ".join(f"{k}={setting.get(k)}" for k in differing)
            subgroups.setdefault(f"{name} ({label})" if label else name, []).append(run)
        for label, subset in subgroups.items():
            metric_names = {_primary(r)[0] for r in subset}
            mean, std, n = _mean_std(_primary(r)[1] for r in subset)
            row: dict[str, Any] = {
                by: label,
                "metric": " / ".join(sorted(metric_names)),
                "mean": mean,
                "std": std,
                "runs": n,
            }
            for column, key in COSTS.items():
                row[column] = _mean_std(_number(r.metrics.get(key)) for r in subset)[0]
            if x != DEFAULT_X:
                row[x] = _mean_std(_number(group_value(r, x)) for r in subset)[0]
            rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("mean", ascending=False, na_position="last").reset_index(drop=True)
    return frame


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _markdown(frame: pd.DataFrame, runs: list[Run], by: str, root: Path) -> str:
    lines = [f"# finexp report: {root}", ""]
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "unfinished")}
    summary = f"{counts['completed']} completed, {counts['failed']} failed, {counts['unfinished']} unfinished"
    lines.append(f"{len(runs)} runs: {summary}. Mean ± std over seeds/folds; costs are means.")
    lines.append("")
    if not frame.empty:
        header = [by, "metric", "mean ± std", "runs", "trainable %", "s / epoch", "peak MB", "checkpoint MB"]
        extra = [c for c in frame.columns if c not in {by, "metric", "mean", "std", "runs", *COSTS}]
        lines += ["| " + " | ".join(header + extra) + " |", "|" + "---|" * (len(header) + len(extra))]
        for row in frame.to_dict("records"):
            spread = f"{_fmt(row['mean'])} ± {_fmt(row['std'])}" if row["runs"] > 1 else f"{_fmt(row['mean'])}"
            costs = [_fmt(row["trainable_pct"], 3), _fmt(row["epoch_s"], 1), _fmt(row["peak_memory_mb"], 0)]
            cells = [str(row[by]), row["metric"], spread, str(row["runs"]), *costs, _fmt(row["checkpoint_mb"], 2)]
            cells += [_fmt(row[c]) for c in extra]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No completed runs.")
    for status in ("failed", "unfinished"):
        bad = [r for r in runs if r.status == status]
        if bad:
            lines += ["", f"## {status.capitalize()} runs", ""]
            for run in bad:
                where = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
                choice = run.info.get("choices", {})
                what = ", ".join(f"{k}={v}" for k, v in choice.items() if k in ("adapter", "model", "task")) or "?"
                lines.append(f"- `{where}` ({what}){': ' + run.error if run.error else ''}")
    return "\n".join(lines) + "\n"


def _plot(frame: pd.DataFrame, by: str, x: str, path: Path, scale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    column = "trainable_params" if x == DEFAULT_X else x
    data = frame.dropna(subset=[column, "mean"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in data.to_dict("records"):
        std = 0.0 if math.isnan(row["std"]) else row["std"]
        ax.errorbar(row[column], row["mean"], yerr=std, fmt="o", capsize=4, label=str(row[by]))
        ax.annotate(str(row[by]), (row[column], row["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    positive = (data[column] > 0).all() if len(data) else False
    if scale == "log" or (scale == "auto" and positive and x == DEFAULT_X):
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters" if x == DEFAULT_X else x)
    metrics = sorted(set(data["metric"])) if len(data) else []
    ax.set_ylabel(" / ".join(metrics) or "primary metric")
    ax.set_title(f"{' / '.join(metrics)} by {by} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    by: str = "adapter",
    x: str = DEFAULT_X,
    scale: str = "auto",
    curve: bool = False,
) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.png`` for the runs under ``root``; returns the table.

    ``curve``: also a learning curve of the primary metric against ``x``, one line per ``by`` value with a ± std
    band (``curve.png``, ``curve.csv``, a table in ``report.md``; :mod:`finexp.learning_curve`).
    """
    root = Path(root).resolve()
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(root)
    if not runs:
        raise FinexpError(f"{root}: no runs found (no run_info.json or error.json below it)")
    frame = summarize(runs, by, x)
    frame.to_csv(out / "report.csv", index=False)
    markdown = _markdown(frame, runs, by, root)
    if curve:
        from finexp.learning_curve import curve_markdown, learning_curve, plot_curve

        points = learning_curve(runs, by, x)
        points.to_csv(out / "curve.csv", index=False)
        markdown += f"\n## Learning curve: {x}\n\n" + curve_markdown(points, by, x)
        if not points.empty:
            plot_curve(points, by, x, str(out / "curve.png"), scale)
    (out / "report.md").write_text(markdown)
    if not frame.empty:
        _plot(frame, by, x, out / "report.png", scale)
    return frame


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``finexp-report``)."""
    parser = argparse.ArgumentParser(
        prog="finexp-report",
        description="Summarize finexp runs (a sweep directory or any tree of run directories) into a table and a plot.",
    )
    parser.add_argument("runs_dir", help="a multirun directory, or any directory with run directories below it")
    by_help = "group by a config group (adapter, model, ...) or a dotted config key (privacy.epsilon)"
    x_help = f"plot's x axis: a metrics.json key, a group or a config key (default: {DEFAULT_X}, log scale)"
    parser.add_argument("--by", default="adapter", help=by_help)
    parser.add_argument("--x", default=DEFAULT_X, help=x_help)
    parser.add_argument("--x-scale", choices=("auto", "log", "linear"), default="auto")
    curve_help = "also draw a learning curve: the primary metric against --x, one line per --by value (curve.png)"
    parser.add_argument("--curve", action="store_true", help=curve_help)
    parser.add_argument("--out", default=None, help="where to write report.* (default: runs_dir)")
    args = parser.parse_args(argv)
    try:
        frame = write_report(args.runs_dir, args.out, args.by, args.x, args.x_scale, args.curve)
    except FinexpError as err:
        print(f"finexp-report: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    out = Path(args.out or args.runs_dir)
    print((out / "report.md").read_text(), end="")
    print(f"written: {out / 'report.md'}, {out / 'report.csv'}" + (f", {out / 'report.png'}" if len(frame) else ""))


if __name__ == "__main__":
    main()
