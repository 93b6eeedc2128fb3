"""Suites: strategies x tasks, average ranks, the Friedman test and the Nemenyi critical-difference diagram."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finexp import stats as st
from finexp.report.compare import (
    DAGGER,
    Options,
    Setting,
    _frame,
    _no_baseline,
    _Predictions,
    adjust,
    compare,
    settings_of,
)
from finexp.report.render import (
    _bad_runs,
    _ci,
    _comparison_lines,
    _counts,
    _fmt,
    _latex_cell,
    _latex_escape,
    _latex_table,
    _p,
    _test_explanation,
)
from finexp.runs_table import (
    Run,
)


# ----------------------------------------------------------------------------------------------------------------
# Suites: strategies x tasks
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SuiteResult:
    """A suite's long table (one row per task and strategy), its wide table and the ranks across tasks."""

    frame: pd.DataFrame
    tasks: list[str]
    strategies: list[str]
    friedman: st.FriedmanResult | None
    cd: float
    note: str = ""


def suite(runs: list[Run], by: str, x: str, options: Options, cache: _Predictions) -> SuiteResult:
    """Per task: settings, row statistics and paired tests against the baseline; Holm across the whole table;
    average ranks, Friedman and Nemenyi over the strategies present on every task."""
    tasks = sorted({r.task for r in runs if r.status == "completed"})
    every: list[Setting] = []
    matched = False
    for task in tasks:
        settings = settings_of([r for r in runs if r.task == task], by, task)
        matched |= compare(settings, by, options, cache) is not None
        every += settings
    if every and not matched:
        raise _no_baseline(options.baseline, every)
    adjust(every, options.alpha)
    frame = _frame(every, by, x, options, task_column=True)
    if not frame.empty:
        frame = frame.sort_values(["task", "mean"], ascending=[True, False], kind="stable").reset_index(drop=True)
    strategies = sorted({s.label for s in every})
    common = [name for name in strategies if all(((frame["task"] == t) & (frame[by] == name)).any() for t in tasks)]
    result = SuiteResult(frame, tasks, strategies, None, math.nan)
    if len(tasks) < 2 or len(common) < 2:
        result.note = (
            f"ranks need >= 2 tasks and >= 2 strategies on all of them ({len(tasks)} tasks, {len(common)} strategies)"
        )
        return result
    scores = np.array([[_cell(frame, t, name, by)["mean"] for name in common] for t in tasks], dtype=float)
    higher = [st.higher_is_better(str(_cell(frame, t, common[0], by)["metric"])) for t in tasks]
    try:
        result.friedman = st.friedman(scores, common, higher)
        result.cd = st.nemenyi_cd(len(common), len(tasks), options.alpha)
    except st.StatsError as err:
        result.note = str(err)
    return result


def _cell(frame: pd.DataFrame, task: str, name: str, by: str) -> dict[str, Any]:
    return frame[(frame["task"] == task) & (frame[by] == name)].iloc[0].to_dict()


def _suite_rows(result: SuiteResult, by: str) -> list[dict[str, Any]]:
    """The wide table: one row per strategy; per task mean, interval, best and significance; ranks and costs."""
    frame, rows = result.frame, []
    ranks = dict(zip(result.friedman.strategies, result.friedman.average_ranks, strict=True)) if result.friedman else {}
    best = {}
    for task in result.tasks:
        part = frame[frame["task"] == task]
        higher = st.higher_is_better(str(part["metric"].iloc[0]))
        best[task] = part["mean"].max() if higher else part["mean"].min()
    for name in result.strategies:
        row: dict[str, Any] = {by: name, "rank": ranks.get(name, math.nan), "cells": {}}
        part = frame[frame[by] == name]
        for task in result.tasks:
            here = part[part["task"] == task]
            if here.empty:
                continue
            cell = here.iloc[0].to_dict()
            cell["best"] = cell["mean"] == best[task]
            row["cells"][task] = cell
        for column in ("trainable_pct", "epoch_s", "peak_memory_mb"):
            row[column] = float(part[column].mean()) if part[column].notna().any() else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (math.isnan(r["rank"]), r["rank"], r[by]))


def _suite_markdown(result: SuiteResult, runs: list[Run], by: str, root: Path, options: Options) -> str:
    lines = [f"# finexp suite report: {root}", "", f"{_counts(runs)}; {len(result.tasks)} tasks.", ""]
    metrics = {t: str(result.frame[result.frame["task"] == t]["metric"].iloc[0]) for t in result.tasks}
    lines += ["## Suite table", ""]
    lines.append(
        "Mean over seeds [95% t-interval over seeds] of each task's primary metric; **bold**: best per task; "
        f"{DAGGER}: different from the task's baseline row (marked ◦) at α = {options.alpha} (paired bootstrap over "
        "test rows, Holm-adjusted across the table). Costs are means over tasks."
    )
    lines.append("")
    header = [by, *(f"{t} ({metrics[t].split('/')[-1]})" for t in result.tasks), "avg rank", "trainable %"]
    header += ["s / epoch", "peak MB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _suite_rows(result, by):
        cells = [str(row[by])]
        for task in result.tasks:
            cell = row["cells"].get(task)
            if cell is None:
                cells.append("—")
                continue
            value = _fmt(cell["mean"], 3)
            value = f"**{value}**" if cell["best"] else value
            value += f" {_ci(cell['ci_low'], cell['ci_high'], 3)}" if math.isfinite(cell["ci_low"]) else ""
            value += f" {DAGGER}" if cell["significant"] else (" ◦" if cell["baseline"] else "")
            cells.append(value)
        cells += [_fmt(row["rank"], 2), _fmt(row["trainable_pct"], 3), _fmt(row["epoch_s"], 1)]
        cells.append(_fmt(row["peak_memory_mb"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Average ranks and Friedman test", ""]
    if result.friedman is not None:
        f = result.friedman
        lines.append(
            f"Ranks per task (1 = best) averaged over N = {f.n} tasks for k = {len(f.strategies)} strategies: "
            + ", ".join(
                f"{n} {r:.2f}" for n, r in sorted(zip(f.strategies, f.average_ranks, strict=True), key=lambda t: t[1])
            )
            + "."
        )
        lines.append(
            f"Friedman χ²_F = {f.chi2:.3f} (p = {_p(f.p_chi2)}), Iman-Davenport F_F = {f.f_statistic:.3f} "
            f"(p = {_p(f.p_f)}); Nemenyi critical difference at α = {options.alpha}: CD = {result.cd:.3f} "
            f"(Demšar 2006). Strategies whose average ranks differ by more than CD differ significantly."
        )
        lines += ["", "## Critical-difference diagram", "", "![critical-difference diagram](cd_diagram.png)"]
    else:
        lines.append(f"Not computed: {result.note}.")
    lines += ["", "## Paired comparisons", "", _test_explanation(options), ""]
    lines += _comparison_lines(result.frame, by, options) or ["No paired comparisons."]
    lines += ["", "## Per-task rows", ""]
    detail = ["task", by, "metric", "mean", "std", "ci_low", "ci_high", "boot_low", "boot_high", "delta"]
    detail += ["p_bootstrap_holm", "p_mcnemar_holm", "runs"]
    lines += ["| " + " | ".join(detail) + " |", "|" + "---|" * len(detail)]
    for row in result.frame.to_dict("records"):
        cells = [str(row[c]) if isinstance(row[c], str | int) else _fmt(row[c]) for c in detail]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _bad_runs(runs, root)
    return "\n".join(lines) + "\n"


def _suite_latex(result: SuiteResult, by: str, options: Options) -> str:
    rows = []
    for row in _suite_rows(result, by):
        cells = [_latex_escape(str(row[by]))]
        for task in result.tasks:
            cell = row["cells"].get(task)
            cells.append(
                "--"
                if cell is None
                else _latex_cell(cell["mean"], cell["ci_low"], cell["ci_high"], cell["best"], cell["significant"])
            )
        cells += [_fmt(row["rank"], 2), _fmt(row["trainable_pct"], 3)]
        rows.append(cells)
    header = [_latex_escape(by), *(_latex_escape(t) for t in result.tasks), "avg.\\ rank", r"trainable \%"]
    caption = (
        "Mean [95\\% CI over seeds] per task; best in bold; $^\\dagger$: different from the task's baseline at "
        f"$\\alpha={options.alpha}$ (paired bootstrap over test rows, Holm-adjusted); average rank across tasks"
    )
    if result.friedman is not None:
        caption += f" (Friedman $p={_p(result.friedman.p_chi2)}$, Nemenyi CD $={result.cd:.2f}$)"
    return _latex_table(rows, header, caption + ".", "l" + "c" * len(result.tasks) + "rr")
