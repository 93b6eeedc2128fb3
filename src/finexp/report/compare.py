"""Grouping runs into settings and comparing them: intervals over seeds and test rows, paired tests, Holm."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finexp import FinexpError
from finexp import stats as st
from finexp.run_predictions import FILENAME as PREDICTIONS_FILE
from finexp.run_predictions import load_row_predictions
from finexp.runs_table import (
    Run,
    differences,
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
    # a run's seed from run_info.json, else its config.yaml (an unfinished run may have neither: its position)
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
