"""Statistics for comparing runs (``finexp-report``): confidence intervals, paired tests, ranks across tasks.

- :func:`t_interval`: mean and Student-t interval over seeds.
- :func:`bootstrap`: percentile interval of a metric over test rows, resampled with a seeded generator; several runs
  on the same rows (seeds) are averaged within each resample. Vectorised: a block of resamples is one array
  operation (confusion counts by ``bincount``, AUROC by the Mann-Whitney statistic on tied-score groups).
- :func:`paired_bootstrap`: the difference of a metric between two settings on the same resampled rows, its interval
  and a two-sided p-value; :func:`mcnemar` for accuracy (exact binomial below 25 discordant rows, chi-square with
  continuity correction otherwise); :func:`holm` adjusts a family of p-values.
- :func:`friedman` and :func:`nemenyi_cd` (Demšar 2006, "Statistical comparisons of classifiers over multiple data
  sets", JMLR 7): average ranks of strategies across tasks, the Friedman test (and Iman-Davenport's F) and the
  Nemenyi critical difference; :func:`plot_cd_diagram` draws the critical-difference diagram.

Metrics are pure functions of :class:`RowPredictions` and a matrix of row indices (one resample per row), so the same
code gives the point estimate (the identity resample) and the bootstrap distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from finexp import FinexpError

EXACT_BELOW = 25  # McNemar: discordant pairs below this use the exact binomial test
BLOCK_ELEMENTS = 2_000_000  # resamples x rows per block: bounds memory (~16 MB per int64 array)


class StatsError(FinexpError):
    """Inputs a statistical comparison cannot use (different test rows, too few values, an unknown metric)."""


@dataclass
class RowPredictions:
    """One run's predictions on its test rows.

    Attributes:
        row_ids: one id per row (``test_predictions.csv``'s ``row_id``), to check two runs saw the same rows.
        gold: class ids (classification), targets (regression); unused for entities.
        probs: (rows, classes) class probabilities (classification).
        value: predictions (regression).
        entities: (rows, 3) per sentence: correct, predicted and gold entity counts (token classification).
        fingerprint: the test split's fingerprint (``run_info.json``), if known.
    """

    row_ids: np.ndarray
    gold: np.ndarray | None = None
    probs: np.ndarray | None = None
    value: np.ndarray | None = None
    entities: np.ndarray | None = None
    fingerprint: str | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def predicted(self) -> np.ndarray:
        if "predicted" not in self._cache:
            self._cache["predicted"] = self.probs.argmax(1)
        return self._cache["predicted"]


Metric = Callable[[RowPredictions, np.ndarray], np.ndarray]  # (predictions, (B, n) row indices) -> (B,) values


def _need(p: RowPredictions, attribute: str, metric: str) -> np.ndarray:
    value = getattr(p, attribute)
    if value is None:
        raise StatsError(f"metric {metric!r} needs {attribute} in the predictions")
    return value


def accuracy(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Share of rows whose likeliest class is the gold one."""
    correct = p.predicted == _need(p, "gold", "accuracy")
    return correct[idx].mean(1)


def _confusion(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    k = p.probs.shape[1]
    code = _need(p, "gold", "f1").astype(np.int64) * k + p.predicted
    keys = code[idx] + (np.arange(len(idx), dtype=np.int64) * k * k)[:, None]
    return np.bincount(keys.ravel(), minlength=len(idx) * k * k).reshape(len(idx), k, k)  # [b, gold, predicted]


def _f1(p: RowPredictions, idx: np.ndarray, weighted: bool) -> np.ndarray:
    counts = _confusion(p, idx)
    tp = np.einsum("bkk->bk", counts).astype(float)
    support, predicted = counts.sum(2), counts.sum(1)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if weighted:
        return (f1 * support).sum(1) / np.maximum(support.sum(1), 1)
    present = denominator > 0  # as torchmetrics: a class neither in gold nor predicted is left out of the mean
    return f1.sum(1) / np.maximum(present.sum(1), 1)


def f1_macro(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Unweighted mean of the per-class F1 (classes absent from gold and predictions are left out)."""
    return _f1(p, idx, weighted=False)


def f1_weighted(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Per-class F1 weighted by the class's gold rows."""
    return _f1(p, idx, weighted=True)


def _binary_auroc(score: np.ndarray, positive: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per resample: ties count one half; NaN where a resample lacks a class."""
    unique, inverse = np.unique(score, return_inverse=True)
    m, b = len(unique), len(idx)
    keys = (inverse[idx] + (np.arange(b, dtype=np.int64) * m)[:, None]).ravel()
    pos = np.bincount(keys, weights=positive[idx].ravel().astype(float), minlength=b * m).reshape(b, m)
    neg = np.bincount(keys, weights=(~positive)[idx].ravel().astype(float), minlength=b * m).reshape(b, m)
    below = np.cumsum(neg, 1) - neg  # negatives with a strictly lower score
    u = (pos * (below + 0.5 * neg)).sum(1)
    pairs = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u / pairs, np.nan)


def auroc(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Binary: AUROC of the second class's probability (finexp's positive class is last). More classes: the
    unweighted mean of one-vs-rest AUROCs."""
    probs, gold = p.probs, _need(p, "gold", "auroc")
    if probs is None:
        raise StatsError("metric 'auroc' needs class probabilities in the predictions")
    if probs.shape[1] == 2:
        return _binary_auroc(probs[:, 1], gold == 1, idx)
    return np.nanmean([_binary_auroc(probs[:, k], gold == k, idx) for k in range(probs.shape[1])], axis=0)


def rmse(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Root mean squared error of the predicted values."""
    error = _need(p, "value", "rmse") - p.gold
    return np.sqrt((error**2)[idx].mean(1))


def mae(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Mean absolute error of the predicted values."""
    return np.abs(_need(p, "value", "mae") - p.gold)[idx].mean(1)


def entity_f1(p: RowPredictions, idx: np.ndarray) -> np.ndarray:
    """Micro entity F1 over the resampled sentences (exact span and type): 2 correct / (predicted + gold)."""
    counts = _need(p, "entities", "f1")[idx].sum(1).astype(float)  # (B, 3)
    denominator = counts[:, 1] + counts[:, 2]
    return np.divide(2 * counts[:, 0], denominator, out=np.zeros(len(idx)), where=denominator > 0)


METRICS: dict[str, Metric] = {  # the metric part of a ``test/<metric>`` key -> its row-level definition
    "accuracy": accuracy,
    "f1_macro": f1_macro,
    "f1_weighted": f1_weighted,
    "auroc": auroc,
    "rmse": rmse,
    "mae": mae,
    "f1": entity_f1,  # token classification's entity F1
}
LOWER_IS_BETTER = {"rmse", "mae", "mse", "loss", "perplexity", "ece", "brier"}


def metric_named(key: str) -> Metric:
    """The metric of a ``test/<name>`` (or bare ``<name>``) key; :class:`StatsError` if it has no row definition."""
    name = key.rsplit("/", 1)[-1]
    if name not in METRICS:
        raise StatsError(f"no row-level bootstrap for metric {key!r}; available: {', '.join(METRICS)}")
    return METRICS[name]


def higher_is_better(key: str) -> bool:
    return key.rsplit("/", 1)[-1] not in LOWER_IS_BETTER


# ----------------------------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval of ``values`` (NaN bounds for a single value)."""
    clean = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(clean) == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(clean.mean())
    if len(clean) < 2:
        return Interval(mean, math.nan, math.nan)
    half = sps.t.ppf(0.5 + confidence / 2, len(clean) - 1) * clean.std(ddof=1) / math.sqrt(len(clean))
    return Interval(mean, mean - half, mean + half)


def resample_blocks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """(block, n) matrices of row indices drawn with replacement, ``resamples`` rows in all; seeded."""
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def check_same_rows(runs: Sequence[RowPredictions], what: str = "runs") -> int:
    """The common row count of ``runs``; :class:`StatsError` if their test splits differ (fingerprint or rows)."""
    if not runs:
        raise StatsError(f"no {what} to compare")
    first = runs[0]
    for other in runs[1:]:
        if first.fingerprint and other.fingerprint and first.fingerprint != other.fingerprint:
            raise StatsError(
                f"{what} were tested on different test splits (data fingerprints {first.fingerprint} and "
                f"{other.fingerprint}); a paired comparison needs the same rows"
            )
        if len(other) != len(first) or not np.array_equal(other.row_ids, first.row_ids):
            raise StatsError(
                f"{what} hold different test rows ({len(first)} and {len(other)} rows, row ids differ); "
                "a paired comparison needs the same rows"
            )
    return len(first)


def distribution(metric: Metric, run: RowPredictions, resamples: int = 1000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The metric of one run on all its rows, and on ``resamples`` resamples of them.

    The resamples depend only on (rows, ``resamples``, ``seed``): runs on the same test split are scored on the same
    resampled rows, so their distributions can be averaged (seeds) and subtracted (paired tests) entry by entry.
    """
    n = len(run)
    estimate = float(metric(run, np.arange(n)[None])[0])
    values = np.concatenate([metric(run, idx) for idx in resample_blocks(n, resamples, seed)])
    return estimate, values


Distribution = tuple[float, np.ndarray]  # (estimate on all rows, values on the resamples)


def combine(distributions: Sequence[Distribution]) -> Distribution:
    """The mean over runs (e.g. seeds) of their estimates and, resample by resample, of their values."""
    return float(np.mean([d[0] for d in distributions])), np.mean([d[1] for d in distributions], axis=0)


def percentile_interval(dist: Distribution, confidence: float = 0.95) -> Interval:
    """The estimate and the percentile interval of its bootstrap values (NaN resamples, e.g. one class, skipped)."""
    estimate, values = dist
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Interval(estimate, math.nan, math.nan)
    low, high = np.quantile(values, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(estimate, float(low), float(high))


def bootstrap(
    metric: Metric, runs: Sequence[RowPredictions], resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Percentile bootstrap interval over test rows of the metric, averaged over ``runs`` (same rows, e.g. seeds)."""
    check_same_rows(runs)
    return percentile_interval(combine([distribution(metric, r, resamples, seed) for r in runs]), confidence)


@dataclass(frozen=True)
class PairedResult:
    """Setting A minus setting B on the same rows: the difference, its interval and a two-sided p-value."""

    delta: float
    low: float
    high: float
    p_value: float
    resamples: int


def paired_difference(a: Distribution, b: Distribution, confidence: float = 0.95) -> PairedResult:
    """A minus B from two distributions on the same resamples (:func:`distribution`, :func:`combine`).

    The p-value is two-sided, from the bootstrap distribution of the difference: twice the smaller share of
    resamples on either side of 0 (with the +1 correction), i.e. about the smallest level at which the percentile
    interval excludes 0.
    """
    delta = a[0] - b[0]
    diffs = a[1] - b[1]
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return PairedResult(delta, math.nan, math.nan, math.nan, 0)
    low, high = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    p_value = min(1.0, 2 * (tail + 1) / (len(diffs) + 1))
    return PairedResult(float(delta), float(low), float(high), p_value, len(diffs))


def paired_bootstrap(
    metric: Metric,
    a: Sequence[RowPredictions],
    b: Sequence[RowPredictions],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Paired bootstrap of ``metric(A) - metric(B)`` over the test rows, each side averaged over its runs (seeds).

    Every resample draws one set of rows and scores both settings on it, so row difficulty cancels out.

    Raises:
        StatsError: the runs' test splits differ (fingerprints or row ids).
    """
    check_same_rows([*a, *b], "the two settings' runs")
    side_a = combine([distribution(metric, r, resamples, seed) for r in a])
    side_b = combine([distribution(metric, r, resamples, seed) for r in b])
    return paired_difference(side_a, side_b, confidence)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two classifiers on the same rows."""

    a_only: int  # rows A gets right and B wrong
    b_only: int  # rows B gets right and A wrong
    statistic: float  # chi-square (with continuity correction), or the smaller count for the exact test
    p_value: float
    method: str  # "exact binomial" | "chi-square, continuity-corrected"


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray, exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's test on per-row correctness of two classifiers (same rows, same order).

    With fewer than ``exact_below`` discordant rows: the exact two-sided binomial test,
    ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``. Otherwise the chi-square statistic with
    Edwards' continuity correction, ``(|b - c| - 1)^2 / (b + c)``, on 1 degree of freedom.
    """
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a_correct.shape != b_correct.shape:
        raise StatsError(f"McNemar needs the same rows: {a_correct.shape[0]} and {b_correct.shape[0]} rows")
    b = int((a_correct & ~b_correct).sum())
    c = int((~a_correct & b_correct).sum())
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact binomial")
    if n < exact_below:
        p_value = min(1.0, 2 * float(sps.binom.cdf(min(b, c), n, 0.5)))
        return McNemarResult(b, c, float(min(b, c)), p_value, "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemarResult(b, c, statistic, float(sps.chi2.sf(statistic, 1)), "chi-square, continuity-corrected")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count towards the family size).

    Sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    values = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(np.isfinite(values))
    adjusted = np.full(len(values), np.nan)
    m = len(valid)
    running = 0.0
    for rank, position in enumerate(valid[np.argsort(values[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * values[position]))
        adjusted[position] = running
    return adjusted.tolist()


# ----------------------------------------------------------------------------------------------------------------
# Across tasks (Demšar 2006)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FriedmanResult:
    """Average ranks (1 = best) of ``k`` strategies over ``n`` tasks, the Friedman statistic and Iman-Davenport's F."""

    strategies: list[str]
    average_ranks: list[float]
    n: int
    chi2: float
    p_chi2: float
    f_statistic: float
    p_f: float


def ranks(scores: np.ndarray, higher_better: Sequence[bool] | bool = True) -> np.ndarray:
    """Per task (row), the rank of each strategy (column): 1 = best, ties share the mean rank."""
    scores = np.asarray(scores, dtype=float)
    direction = np.where(np.broadcast_to(np.asarray(higher_better), (scores.shape[0],)), -1.0, 1.0)
    return np.vstack([sps.rankdata(direction[i] * row) for i, row in enumerate(scores)])


def friedman(
    scores: np.ndarray, strategies: Sequence[str], higher_better: Sequence[bool] | bool = True
) -> FriedmanResult:
    """The Friedman test on a (tasks, strategies) matrix of scores.

    ``chi2_F = 12 N / (k (k+1)) [sum_j R_j^2 - k (k+1)^2 / 4]`` on k-1 degrees of freedom, and Iman and Davenport's
    ``F_F = (N-1) chi2_F / (N (k-1) - chi2_F)`` on (k-1, (k-1)(N-1)) degrees of freedom (Demšar 2006, section 3.2.2).

    Raises:
        StatsError: fewer than 2 tasks or strategies, or missing scores.
    """
    scores = np.asarray(scores, dtype=float)
    n, k = scores.shape
    if n < 2 or k < 2:
        raise StatsError(f"the Friedman test needs >= 2 tasks and >= 2 strategies, got {n} tasks x {k} strategies")
    if not np.isfinite(scores).all():
        raise StatsError("the Friedman test needs a score for every strategy on every task")
    average = ranks(scores, higher_better).mean(0)
    chi2 = 12 * n / (k * (k + 1)) * (float((average**2).sum()) - k * (k + 1) ** 2 / 4)
    p_chi2 = float(sps.chi2.sf(chi2, k - 1))
    denominator = n * (k - 1) - chi2
    f_stat = (n - 1) * chi2 / denominator if denominator > 0 else math.inf
    p_f = float(sps.f.sf(f_stat, k - 1, (k - 1) * (n - 1))) if math.isfinite(f_stat) else 0.0
    return FriedmanResult(list(strategies), average.tolist(), n, chi2, p_chi2, f_stat, p_f)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical value q_alpha: the studentized range quantile (infinite df) divided by sqrt(2)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Critical difference of average ranks, ``q_alpha sqrt(k (k+1) / (6 N))``, for k strategies on N tasks."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def cliques(average_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last index in rank order) of strategies whose average ranks differ by less than ``cd``:
    the groups a CD diagram joins with a bar (no significant difference inside a group)."""
    order = np.argsort(average_ranks, kind="stable")
    values = np.asarray(average_ranks)[order]
    groups: list[tuple[int, int]] = []
    for start in range(len(values)):
        end = start
        while end + 1 < len(values) and values[end + 1] - values[start] < cd:
            end += 1
        if end > start and not any(s <= start and end <= e for s, e in groups):
            groups.append((start, end))
    return groups


def plot_cd_diagram(
    strategies: Sequence[str], average_ranks: Sequence[float], cd: float, path: str, title: str = ""
) -> None:
    """Demšar's critical-difference diagram: the rank axis (1 = best, left), each strategy at its average rank,
    bars joining strategies not significantly different, and the CD interval above the axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    k = len(strategies)
    order = np.argsort(average_ranks, kind="stable")
    values = np.asarray(average_ranks, dtype=float)[order]
    names = [strategies[i] for i in order]
    groups = cliques(average_ranks, cd)
    height = 1.6 + 0.32 * math.ceil(k / 2) + 0.12 * len(groups)
    fig, ax = plt.subplots(figsize=(7.5, height))
    low, high = 1, max(k, 2)
    ax.set_xlim(low - 0.6, high + 0.6)
    top = 0.0
    ax.hlines(top, low, high, color="black", lw=1)
    for r in range(low, high + 1):
        ax.vlines(r, top, top + 0.08, color="black", lw=1)
        ax.text(r, top + 0.14, str(r), ha="center", va="bottom", fontsize=9)
    if math.isfinite(cd):
        ax.hlines(top + 0.55, low, low + cd, color="black", lw=2)
        ax.vlines([low, low + cd], top + 0.5, top + 0.6, color="black", lw=1)
        ax.text(low + cd / 2, top + 0.63, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    half = math.ceil(k / 2)
    base = -0.3 - 0.12 * len(groups)  # labels start below the clique bars
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        left = i < half
        depth = base - 0.3 * (i if left else k - 1 - i)
        x_text = low - 0.5 if left else high + 0.5
        ax.plot([value, value, x_text], [top, depth, depth], color="tab:blue", lw=1)
        ax.text(x_text, depth, f"{name} ({value:.2f})", ha="right" if left else "left", va="center", fontsize=9)
    for j, (start, end) in enumerate(groups):
        y = -0.2 - 0.12 * j
        ax.hlines(y, values[start] - 0.03, values[end] + 0.03, color="black", lw=3)
    ax.set_ylim(base - 0.3 * half, 1.0)
    ax.axis("off")
    ax.set_title(title or "critical difference (Nemenyi)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
