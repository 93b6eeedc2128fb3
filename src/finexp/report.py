"""``finexp-report``: a sweep's runs -> tables with confidence intervals and paired significance tests, and figures.

    finexp-report outputs/credit_scoring/multiruns/2026-11-29/08-00-00
    finexp-report outputs/ --by privacy.epsilon --x privacy.epsilon
    finexp-report outputs/ --by model --x time/epoch_s
    finexp-report outputs/sentiment/multiruns/<date>/<time> --by method --x data.k_shot --curve   # learning curve
    finexp-report outputs/benchmark_suite/<date>/<time> --suite --baseline strategy=full --format latex --reproduce

Every directory below the given one that holds ``run_info.json`` or ``error.json`` is a run (:mod:`finexp.runs_table`).
Completed runs are grouped by ``--by`` (a config group's chosen option such as ``adapter``, ``strategy`` = adapter
and method, or any dotted config key such as ``privacy.epsilon``); runs of a group that differ only in ``seed`` or
``data.cv.fold`` are aggregated, and runs that differ in anything else become separate rows named by what differs.

Each row: mean ± std over seeds, a 95% Student-t interval over seeds, a 95% bootstrap interval over test rows (from
each run's ``test_predictions.csv``), and against a baseline row (``--baseline key=value``, default the best row)
the paired bootstrap difference with its interval and p-value and McNemar's test on accuracy, Holm-adjusted across
the table's comparisons; ``†`` marks differences significant at ``--alpha``. ``--suite``: one table with strategies
as rows and tasks as columns, average ranks, the Friedman test and the Nemenyi critical-difference diagram.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finexp import FinexpError
from finexp import stats as st
from finexp.run_predictions import FILENAME as PREDICTIONS_FILE
from finexp.run_predictions import load_row_predictions
from finexp.runs_table import (  # noqa: F401  (Run, find_runs: re-exported, finexp.report's public surface)
    AGGREGATED,
    IGNORED_PREFIXES,
    Run,
    differences,
    find_runs,
    group_value,
    mean_std,
    number,
    primary,
    setting,
)

COSTS = {  # report column -> metrics.json key
    "trainable_pct": "params/trainable_pct",
    "trainable_params": "params/trainable",
    "epoch_s": "time/epoch_s",
    "samples_per_s": "throughput/train_samples_per_s",
    "peak_memory_mb": "memory/peak_mb",
    "checkpoint_mb": "checkpoint/size_mb",
}
DEFAULT_X = "params/trainable"
FORMATS = ("markdown", "latex", "csv", "html")
DAGGER = "†"


@dataclass
class Options:
    """How ``finexp-report`` compares rows (``--baseline``, ``--alpha``, ``--resamples``, ``--seed``)."""

    baseline: str | None = None  # "key=value" naming the reference row; None: the best row (per task)
    alpha: float = 0.05  # significance level of the Holm-adjusted paired tests
    resamples: int = 1000  # bootstrap resamples of the test rows
    seed: int = 0  # seeds the resamples: the same report twice gives the same intervals
    confidence: float = 0.95


@dataclass
class Setting:
    """One row of a table: the runs of one setting (its seeds/folds) on one task."""

    label: str
    runs: list[Run]
    task: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Grouping
# ----------------------------------------------------------------------------------------------------------------
def settings_of(runs: list[Run], by: str, task: str = "") -> list[Setting]:
    """Completed runs grouped by ``by``; runs of a group differing in more than seed/fold become separate rows."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            groups.setdefault(str(group_value(run, by)), []).append(run)
    out = []
    for name, members in groups.items():
        differing = [k for k in differences(members) if not (by == "strategy" and k.startswith(("adapter", "method")))]
        subgroups: dict[str, list[Run]] = {}
        for run in members:
            values = setting(run)
            label = ", ".join(f"{k}={values.get(k)}" for k in differing)
            subgroups.setdefault(f"{name} ({label})" if label else name, []).append(run)
        out += [Setting(label, subset, task) for label, subset in subgroups.items()]
    return out


def _metric_of(runs: list[Run]) -> str:
    return " / ".join(sorted({primary(r)[0] for r in runs}))


def _row(s: Setting, by: str, x: str, confidence: float) -> dict[str, Any]:
    mean, std, n = mean_std(primary(r)[1] for r in s.runs)
    interval = st.t_interval([primary(r)[1] for r in s.runs], confidence)
    row: dict[str, Any] = {by: s.label, "metric": _metric_of(s.runs), "mean": mean, "std": std, "runs": n}
    row |= {"ci_low": interval.low, "ci_high": interval.high}
    for column, key in COSTS.items():
        row[column] = mean_std(number(r.metrics.get(key)) for r in s.runs)[0]
    if x != DEFAULT_X:
        row[x] = mean_std(number(group_value(r, x)) for r in s.runs)[0]
    return row


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    higher = st.higher_is_better(str(frame["metric"].iloc[0]))
    return frame.sort_values("mean", ascending=not higher, na_position="last").reset_index(drop=True)


def summarize(runs: list[Run], by: str = "adapter", x: str = DEFAULT_X) -> pd.DataFrame:
    """One row per setting: mean ± std and t-interval of the primary metric over seeds/folds, and the mean costs."""
    return _sort(pd.DataFrame([_row(s, by, x, 0.95) for s in settings_of(runs, by)]))


# ----------------------------------------------------------------------------------------------------------------
# Statistics over test rows
# ----------------------------------------------------------------------------------------------------------------
class _Predictions:
    """Each run's test predictions and bootstrap distribution, read and computed once per report."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._dist: dict[Path, st.Distribution | None] = {}
        self._rows: dict[Path, st.RowPredictions | None] = {}
        self.errors: dict[Path, str] = {}

    def rows(self, run: Run) -> st.RowPredictions | None:
        if run.path not in self._rows:
            path = run.path / PREDICTIONS_FILE
            value = None
            if path.is_file():
                problem = str((run.config.get("task") or {}).get("problem") or "classification")
                try:
                    value = load_row_predictions(path, problem, run.info.get("labels"), run.test_fingerprint)
                except FinexpError as err:
                    self.errors[run.path] = str(err)
            self._rows[run.path] = value
        return self._rows[run.path]

    def distribution(self, run: Run, metric: st.Metric) -> st.Distribution | None:
        if run.path not in self._dist:
            rows = self.rows(run)
            o = self.options
            self._dist[run.path] = None if rows is None else st.distribution(metric, rows, o.resamples, o.seed)
        return self._dist[run.path]


def _same_split(runs: list[Run]) -> str | None:
    """Why ``runs`` cannot be paired (different test splits), or None."""
    prints = sorted({str(r.test_fingerprint) for r in runs})
    if len(prints) > 1:
        return f"tested on different test splits (data fingerprints {', '.join(prints)})"
    return None


def _row_statistics(s: Setting, cache: _Predictions) -> None:
    """The bootstrap interval over test rows of the setting's metric (mean over its runs)."""
    key = _metric_of(s.runs)
    try:
        metric = st.metric_named(key)
    except st.StatsError as err:
        s.stats["note"] = str(err)
        return
    missing = [r for r in s.runs if cache.rows(r) is None]
    if missing:
        s.stats["note"] = f"no {PREDICTIONS_FILE} in {len(missing)} of {len(s.runs)} runs: no row-level statistics"
        return
    why = _same_split(s.runs)
    if why:
        s.stats["note"] = f"its runs were {why}"
        return
    try:
        st.check_same_rows([cache.rows(r) for r in s.runs], f"runs of {s.label}")
    except st.StatsError as err:
        s.stats["note"] = str(err)
        return
    s.stats["dist"] = st.combine([cache.distribution(r, metric) for r in s.runs])
    interval = st.percentile_interval(s.stats["dist"], cache.options.confidence)
    s.stats |= {"boot_low": interval.low, "boot_high": interval.high}


def _by_seed(runs: list[Run]) -> dict[Any, Run]:
    return {r.info.get("seed", r.config.get("seed", i)): r for i, r in enumerate(runs)}


def _compare(s: Setting, base: Setting, cache: _Predictions) -> None:
    """Paired bootstrap and McNemar of ``s`` against ``base`` (same test rows, or a note saying why not)."""
    if "dist" not in s.stats or "dist" not in base.stats:
        s.stats.setdefault("note", f"no paired test: {base.label} or this row lacks row-level predictions")
        return
    why = _same_split([*s.runs, *base.runs])
    if why is None:
        try:
            st.check_same_rows([cache.rows(s.runs[0]), cache.rows(base.runs[0])], f"{s.label} and {base.label}")
        except st.StatsError as err:
            why = str(err)
    if why:
        s.stats["note"] = f"not compared with {base.label}: {why}; paired tests need the same test rows"
        return
    paired = st.paired_difference(s.stats["dist"], base.stats["dist"], cache.options.confidence)
    s.stats |= {
        "delta": paired.delta,
        "delta_low": paired.low,
        "delta_high": paired.high,
        "p_bootstrap": paired.p_value,
    }
    first = cache.rows(s.runs[0])
    if first.probs is None:
        return
    mine, theirs = _by_seed(s.runs), _by_seed(base.runs)
    pairs = [(mine[k], theirs[k]) for k in sorted(set(mine) & set(theirs), key=str)]
    if not pairs:  # no seed in common: pair in order
        ordered = sorted(s.runs, key=lambda r: str(r.path)), sorted(base.runs, key=lambda r: str(r.path))
        pairs = list(zip(*ordered, strict=False))  # the shorter side sets the number of pairs
    results = []
    for a, b in pairs:
        ra, rb = cache.rows(a), cache.rows(b)
        results.append(st.mcnemar(ra.predicted == ra.gold, rb.predicted == rb.gold))
    worst = max(results, key=lambda r: r.p_value)  # significant only if significant for every seed pair
    s.stats |= {"p_mcnemar": worst.p_value, "mcnemar_test": worst.method, "mcnemar_pairs": len(results)}
    s.stats["mcnemar_discordant"] = "; ".join(f"{r.a_only}/{r.b_only}" for r in results)


def _pick_baseline(settings: list[Setting], spec: str | None, by: str) -> Setting | None:
    if not settings:
        return None
    if spec is None or spec == "best":
        key = _metric_of(settings[0].runs)
        sign = 1 if st.higher_is_better(key) else -1
        scored = [(sign * mean_std(primary(r)[1] for r in s.runs)[0], i) for i, s in enumerate(settings)]
        scored = [(v, i) for v, i in scored if math.isfinite(v)]
        return settings[max(scored)[1]] if scored else settings[0]
    key, _, value = spec.partition("=")
    if key == by:
        exact = [s for s in settings if s.label == value]
        if exact:
            return exact[0]
    matches = [s for s in settings if all(str(group_value(r, key)) == value for r in s.runs)]
    if len(matches) > 1:
        exact = [s for s in matches if s.label == value]
        if len(exact) == 1:
            return exact[0]
        names = ", ".join(s.label for s in matches)
        raise FinexpError(f"--baseline {spec} matches {len(matches)} rows ({names}); name one, e.g. --by {key}")
    return matches[0] if matches else None


def _no_baseline(spec: str | None, settings: list[Setting]) -> FinexpError:
    names = ", ".join(sorted({s.label for s in settings}))
    return FinexpError(f"--baseline {spec} matches no row (rows: {names}); use key=value of a --by group or best")


def compare(settings: list[Setting], by: str, options: Options, cache: _Predictions) -> Setting | None:
    """Row statistics for every setting of one task, and paired tests against its baseline; returns the baseline."""
    for s in settings:
        _row_statistics(s, cache)
    base = _pick_baseline(settings, options.baseline, by)
    if base is None:
        return None
    base.stats["baseline"] = True
    for s in settings:
        if s is not base:
            _compare(s, base, cache)
    return base


def adjust(settings: list[Setting], alpha: float) -> None:
    """Holm-adjust the paired tests' p-values across every comparison in the table; mark the significant ones."""
    for column in ("p_bootstrap", "p_mcnemar"):
        adjusted = st.holm([s.stats.get(column, math.nan) for s in settings])
        for s, value in zip(settings, adjusted, strict=True):
            s.stats[f"{column}_holm"] = value
    for s in settings:
        p = s.stats.get("p_bootstrap_holm", math.nan)
        s.stats["significant"] = bool(math.isfinite(p) and p < alpha)


STAT_COLUMNS = [
    "boot_low",
    "boot_high",
    "baseline",
    "delta",
    "delta_low",
    "delta_high",
    "p_bootstrap",
    "p_bootstrap_holm",
    "p_mcnemar",
    "p_mcnemar_holm",
    "mcnemar_test",
    "mcnemar_discordant",
    "significant",
    "note",
]


def _frame(settings: list[Setting], by: str, x: str, options: Options, task_column: bool = False) -> pd.DataFrame:
    rows = []
    for s in settings:
        row = ({"task": s.task} if task_column else {}) | _row(s, by, x, options.confidence)
        for column in STAT_COLUMNS:
            default = False if column in ("baseline", "significant") else ("" if column in ("note",) else math.nan)
            row[column] = s.stats.get(column, default)
        if isinstance(row["mcnemar_test"], float):
            row["mcnemar_test"] = ""
        if isinstance(row["mcnemar_discordant"], float):
            row["mcnemar_discordant"] = ""
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ci(low: Any, high: Any, digits: int = 4) -> str:
    return "—" if _fmt(low) == "—" else f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _counts(runs: list[Run]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "unfinished")}
    done, failed, unfinished = counts["completed"], counts["failed"], counts["unfinished"]
    return f"{len(runs)} runs: {done} completed, {failed} failed, {unfinished} unfinished"


def _bad_runs(runs: list[Run], root: Path) -> list[str]:
    lines = []
    for status in ("failed", "unfinished"):
        bad = [r for r in runs if r.status == status]
        if bad:
            lines += ["", f"## {status.capitalize()} runs", ""]
            for run in bad:
                where = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
                choice = run.info.get("choices", {})
                what = ", ".join(f"{k}={v}" for k, v in choice.items() if k in ("adapter", "model", "task")) or "?"
                lines.append(f"- `{where}` ({what}){': ' + run.error if run.error else ''}")
    return lines


def _comparison_lines(frame: pd.DataFrame, by: str, options: Options) -> list[str]:
    """Sentences saying which differences are significant, and why some rows were not compared."""
    lines = []
    for row in frame.to_dict("records"):
        name = f"{row['task']}: {row[by]}" if "task" in row else str(row[by])
        if row["baseline"]:
            continue
        if isinstance(row["delta"], float) and math.isfinite(row["delta"]):
            verdict = "significant" if row["significant"] else "not significant"
            lines.append(
                f"- {name}: Δ = {row['delta']:+.4f} {_ci(row['delta_low'], row['delta_high'])}, paired bootstrap "
                f"p = {_p(row['p_bootstrap'])} (Holm {_p(row['p_bootstrap_holm'])}), McNemar p = "
                f"{_p(row['p_mcnemar'])} (Holm {_p(row['p_mcnemar_holm'])}): **{verdict}** at α = {options.alpha}"
            )
        elif row["note"]:
            lines.append(f"- {name}: {row['note']}")
    return lines


def _markdown(frame: pd.DataFrame, runs: list[Run], by: str, root: Path, options: Options) -> str:
    lines = [f"# finexp report: {root}", ""]
    lines.append(
        f"{_counts(runs)}. Mean ± std over seeds/folds with a 95% t-interval over seeds and a 95% bootstrap interval "
        f"over test rows ({options.resamples} resamples, seed {options.seed}); costs are means."
    )
    lines.append("")
    if not frame.empty:
        base = frame[frame["baseline"]]
        base_name = str(base[by].iloc[0]) if len(base) else "—"
        header = [by, "metric", "mean ± std", "95% CI (seeds)", "95% CI (rows)", f"Δ vs {base_name} [95% CI]"]
        header += ["p (Holm)", "runs", "trainable %", "s / epoch", "peak MB", "checkpoint MB"]
        extra = [c for c in frame.columns if c not in {by, "metric", "mean", "std", "runs", *COSTS, *STAT_COLUMNS}]
        extra = [c for c in extra if c not in ("ci_low", "ci_high")]
        lines += ["| " + " | ".join(header + extra) + " |", "|" + "---|" * (len(header) + len(extra))]
        for row in frame.to_dict("records"):
            spread = f"{_fmt(row['mean'])} ± {_fmt(row['std'])}" if row["runs"] > 1 else f"{_fmt(row['mean'])}"
            if row["baseline"]:
                delta, p = "baseline", "—"
            elif math.isfinite(row["delta"]):
                mark = f" {DAGGER}" if row["significant"] else ""
                delta, p = (
                    f"{row['delta']:+.4f} {_ci(row['delta_low'], row['delta_high'])}{mark}",
                    _p(row["p_bootstrap_holm"]),
                )
            else:
                delta, p = "—", "—"
            cells = [str(row[by]), row["metric"], spread, _ci(row["ci_low"], row["ci_high"])]
            cells += [_ci(row["boot_low"], row["boot_high"]), delta, p, str(row["runs"])]
            cells += [_fmt(row["trainable_pct"], 3), _fmt(row["epoch_s"], 1), _fmt(row["peak_memory_mb"], 0)]
            cells += [_fmt(row["checkpoint_mb"], 2), *(_fmt(row[c]) for c in extra)]
            lines.append("| " + " | ".join(cells) + " |")
        comparisons = _comparison_lines(frame, by, options)
        if comparisons:
            lines += ["", "## Paired comparisons", "", _test_explanation(options), "", *comparisons]
        lines += ["", "![primary metric against trainable parameters](report.png)"]
    else:
        lines.append("No completed runs.")
    lines += _bad_runs(runs, root)
    return "\n".join(lines) + "\n"


def _test_explanation(options: Options) -> str:
    return (
        f"Against the baseline row on the same test rows: Δ is the primary metric minus the baseline's (mean over "
        f"seeds), its 95% interval and two-sided p-value from a paired bootstrap ({options.resamples} resamples of "
        f"the test rows, both rows scored on each); McNemar's test on accuracy per seed pair (exact binomial below "
        f"{st.EXACT_BELOW} discordant rows, chi-square with continuity correction otherwise; the largest p over the "
        f"seed pairs). p-values are Holm-adjusted across the table's comparisons; {DAGGER}: significant at "
        f"α = {options.alpha} (paired bootstrap, Holm)."
    )


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#")):
        text = text.replace(char, escaped)
    for char, escaped in (("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(char, escaped)
    return text


def _latex_cell(mean: float, low: float, high: float, best: bool, significant: bool, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "--"
    value = f"{mean:.{digits}f}"
    value = rf"\textbf{{{value}}}" if best else value
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else ""
    return value + interval + (r"$^\dagger$" if significant else "")


def _latex_table(rows: list[list[str]], header: list[str], caption: str, align: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex(frame: pd.DataFrame, by: str, options: Options) -> str:
    """A booktabs table of the per-setting report: mean [95% CI over seeds], Δ vs the baseline, Holm p."""
    if frame.empty:
        return "% no completed runs\n"
    higher = st.higher_is_better(str(frame["metric"].iloc[0]))
    best = frame["mean"].max() if higher else frame["mean"].min()
    rows = []
    for row in frame.to_dict("records"):
        cell = _latex_cell(row["mean"], row["ci_low"], row["ci_high"], row["mean"] == best, row["significant"])
        delta = "baseline" if row["baseline"] else ("--" if not math.isfinite(row["delta"]) else f"{row['delta']:+.3f}")
        rows.append([_latex_escape(str(row[by])), cell, delta, _latex_escape(_p(row["p_bootstrap_holm"]))])
    metric = _latex_escape(str(frame["metric"].iloc[0]))
    caption = (
        f"{metric}: mean [95\\% CI over seeds]; best in bold; $^\\dagger$: different from the baseline at "
        f"$\\alpha={options.alpha}$ (paired bootstrap over test rows, Holm-adjusted)."
    )
    return _latex_table(rows, [_latex_escape(by), metric, r"$\Delta$", "$p$ (Holm)"], caption, "lccr")


def _html(text: str, directory: Path) -> str:
    """One self-contained page: the Markdown report as HTML with its PNG figures inlined as data URIs.

    Not finexp.analysis.report.render_html: importing finexp.analysis loads captum (seconds per report)."""
    import base64
    import re

    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        path = directory / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="([^":/]+\.png)"', inline, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em}"
        "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
    )
    head = f"<meta charset='utf-8'><title>finexp report</title><style>{style}</style>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>\n"


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


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility
# ----------------------------------------------------------------------------------------------------------------
def _majority(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0] if values else ""


def reproduce_section(runs: list[Run], root: Path) -> str:
    """The commands that made the runs, the package versions they ran with, and the runs that are not comparable:
    a code version (git commit, dirty tree) or a test split (fingerprint, per task) other than most runs'."""
    done = [r for r in runs if r.status == "completed"]
    lines = ["## Reproduce", ""]
    commands = Counter(_command_line(r.info["command"]) for r in done if r.info.get("command"))
    if commands:
        lines += ["Commands (as run, with how many runs each made):", "", "```bash"]
        lines += [f"{c}   # {n} run{'s' if n > 1 else ''}" for c, n in commands.most_common()]
        lines += ["```", ""]
    versions: dict[str, Counter] = {}
    for run in done:
        for package, version in (run.info.get("versions") or {}).items():
            versions.setdefault(package, Counter())[str(version)] += 1
    if versions:
        lines += ["| package | version(s) |", "|---|---|"]
        for package in sorted(versions):
            seen = versions[package]
            text = ", ".join(f"{v} ({n} runs)" for v, n in seen.most_common()) if len(seen) > 1 else next(iter(seen))
            lines.append(f"| {package} | {text}{' **differs**' if len(seen) > 1 else ''} |")
        lines.append("")
    flags = []
    code = _majority([r.code_version for r in done])
    for run in done:
        if run.code_version != code:
            flags.append(f"- `{_where(run, root)}`: code version {run.code_version}, most runs {code}")
    for task in sorted({r.task for r in done}):
        members = [r for r in done if r.task == task]
        common = _majority([str(r.test_fingerprint) for r in members])
        for run in members:
            if str(run.test_fingerprint) != common:
                flags.append(
                    f"- `{_where(run, root)}` ({task}): test split fingerprint {run.test_fingerprint}, most runs "
                    f"{common}: not comparable row by row"
                )
    lines.append(
        "Not comparable with the others:"
        if flags
        else "Every run has the same code version and, per task, the same test split."
    )
    lines += ["", *flags] if flags else []
    return "\n".join(lines) + "\n"


def _command_line(argv: list[str]) -> str:
    """``sys.argv`` of a run as a shell command; ``python -m finexp.train`` and ``.../train.py`` read finexp-train."""
    argv = [str(a) for a in argv]
    if argv and Path(argv[0]).name in ("train.py", "finexp-train", "__main__.py"):
        argv = ["finexp-train", *argv[1:]]
    return " ".join(shlex.quote(a) for a in argv)


def _where(run: Run, root: Path) -> str:
    return str(run.path.relative_to(root) if run.path.is_relative_to(root) else run.path)


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


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    by: str = "adapter",
    x: str = DEFAULT_X,
    scale: str = "auto",
    curve: bool = False,
    *,
    suite_mode: bool = False,
    options: Options | None = None,
    formats: tuple[str, ...] = ("markdown",),
    reproduce: bool = False,
) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.png`` (``cd_diagram.png`` for a suite; ``report.tex`` and
    ``report.html`` when ``formats`` asks) for the runs under ``root``; returns the table (long form for a suite).

    ``curve``: also a learning curve of the primary metric against ``x``, one line per ``by`` value with a ± std
    band (``curve.png``, ``curve.csv``, a table in ``report.md``; :mod:`finexp.learning_curve`).
    """
    options = options or Options()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise FinexpError(f"--format {','.join(unknown)}: unknown; choose from {', '.join(FORMATS)}")
    if not 0 < options.alpha < 1:
        raise FinexpError(f"--alpha {options.alpha}: must be in (0, 1)")
    if options.resamples < 10:
        raise FinexpError(f"--resamples {options.resamples}: must be >= 10")
    if options.baseline not in (None, "best") and "=" not in options.baseline:
        raise FinexpError(f"--baseline {options.baseline!r}: expected key=value (e.g. adapter=full) or best")
    root = Path(root).resolve()
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(root)
    if not runs:
        raise FinexpError(f"{root}: no runs found (no run_info.json or error.json below it)")
    cache = _Predictions(options)
    if suite_mode:
        result = suite(runs, by, x, options, cache)
        frame = result.frame
        markdown = _suite_markdown(result, runs, by, root, options)
        latex = _suite_latex(result, by, options) if not frame.empty else "% no completed runs\n"
        if result.friedman is not None:
            title = f"average rank over {len(result.tasks)} tasks (Nemenyi CD, α = {options.alpha})"
            st.plot_cd_diagram(result.friedman.strategies, result.friedman.average_ranks, result.cd,
                               str(out / "cd_diagram.png"), title)  # fmt: skip
    else:
        settings = settings_of(runs, by)
        if settings and compare(settings, by, options, cache) is None:
            raise _no_baseline(options.baseline, settings)
        adjust(settings, options.alpha)
        frame = _sort(_frame(settings, by, x, options))
        markdown = _markdown(frame, runs, by, root, options)
        latex = _latex(frame, by, options)
        if curve:
            from finexp.learning_curve import curve_markdown, learning_curve, plot_curve

            points = learning_curve(runs, by, x)
            points.to_csv(out / "curve.csv", index=False)
            markdown += f"\n## Learning curve: {x}\n\n" + curve_markdown(points, by, x)
            if not points.empty:
                plot_curve(points, by, x, str(out / "curve.png"), scale)
                markdown += "\n![learning curve](curve.png)\n"
        if not frame.empty:
            _plot(frame, by, x, out / "report.png", scale)
    if cache.errors:
        markdown += "\n## Unreadable test predictions\n\n" + "\n".join(f"- {e}" for e in cache.errors.values()) + "\n"
    if reproduce:
        markdown += "\n" + reproduce_section(runs, root)
    frame.to_csv(out / "report.csv", index=False)
    (out / "report.md").write_text(markdown)
    if "latex" in formats:
        (out / "report.tex").write_text(latex)
    if "html" in formats:
        (out / "report.html").write_text(_html(markdown, out))
    return frame


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``finexp-report``)."""
    parser = argparse.ArgumentParser(
        prog="finexp-report",
        description=(
            "Summarize finexp runs (a sweep directory or any tree of run directories) into tables with confidence "
            "intervals and paired significance tests, and figures."
        ),
        epilog=(
            "examples:\n"
            "  finexp-report outputs/credit_scoring/multiruns/<date>/<time>\n"
            "  finexp-report <sweep> --baseline adapter=full --alpha 0.01 --format latex\n"
            "  finexp-report <suite dir> --suite --baseline strategy=full --format html --reproduce\n"
            "  finexp-report <sweep> --by method --x data.k_shot --curve"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs_dir", help="a multirun directory, or any directory with run directories below it")
    by_help = (
        "group by a config group (adapter, model, method, ...), 'strategy' (adapter and method), or a dotted config "
        "key (privacy.epsilon); default: adapter, and strategy with --suite"
    )
    x_help = f"plot's x axis: a metrics.json key, a group or a config key (default: {DEFAULT_X}, log scale)"
    parser.add_argument("--by", default=None, help=by_help)
    parser.add_argument("--x", default=DEFAULT_X, help=x_help)
    parser.add_argument("--x-scale", choices=("auto", "log", "linear"), default="auto")
    curve_help = "also draw a learning curve: the primary metric against --x, one line per --by value (curve.png)"
    parser.add_argument("--curve", action="store_true", help=curve_help)
    suite_help = "one table of strategies (rows) x tasks (columns), average ranks, Friedman test, CD diagram"
    parser.add_argument("--suite", action="store_true", help=suite_help)
    base_help = "reference row of the paired tests: key=value (adapter=full, strategy=lora) or best (default)"
    parser.add_argument("--baseline", default=None, help=base_help)
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (Holm-adjusted; default 0.05)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    format_help = "printed format; latex also writes report.tex, html report.html (comma-separated: several)"
    parser.add_argument("--format", default="markdown", help=format_help + f"; one of {', '.join(FORMATS)}")
    reproduce_help = "add the commands, package versions and not-comparable runs (code version, test split)"
    parser.add_argument("--reproduce", action="store_true", help=reproduce_help)
    parser.add_argument("--out", default=None, help="where to write report.* (default: runs_dir)")
    args = parser.parse_args(argv)
    by = args.by or ("strategy" if args.suite else "adapter")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    options = Options(args.baseline, args.alpha, args.resamples, args.seed)
    try:
        frame = write_report(
            args.runs_dir, args.out, by, args.x, args.x_scale, args.curve,
            suite_mode=args.suite, options=options, formats=formats, reproduce=args.reproduce,
        )  # fmt: skip
    except FinexpError as err:
        print(f"finexp-report: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    out = Path(args.out or args.runs_dir)
    first = formats[0] if formats else "markdown"
    shown = {"markdown": "report.md", "latex": "report.tex", "csv": "report.csv", "html": "report.md"}[first]
    print((out / shown).read_text(), end="")
    written = ["report.md", "report.csv"] + [
        f for f, k in (("report.tex", "latex"), ("report.html", "html")) if k in formats
    ]
    figures = [f for f in ("report.png", "cd_diagram.png", "curve.png") if (out / f).is_file() and len(frame)]
    print("written: " + ", ".join(str(out / f) for f in written + figures))


if __name__ == "__main__":
    main()
