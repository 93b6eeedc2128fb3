"""finexp.stats against known answers: closed forms, scikit-learn/seqeval definitions and Demšar (2006)'s example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, roc_auc_score

from finexp import stats as st
from finexp.run_predictions import _entity_counts

# Demšar 2006, Table 6: AUC of C4.5 variants on 14 UCI data sets. The paper ranks from unrounded values: in "voting"
# C4.5+cf is ahead of C4.5+m+cf although both print as 0.975 (hence 0.97501; its average ranks need it).
DEMSAR = np.array([
    [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
    [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
    [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
    [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
    [0.972, 0.981, 0.97501, 0.975], [0.957, 0.978, 0.946, 0.970],
])  # fmt: skip


def classifier(gold: np.ndarray, correct: np.ndarray, classes: int = 2, seed: int = 0) -> st.RowPredictions:
    """Probabilities whose argmax is the gold class exactly where ``correct``."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.0, 0.4, size=(len(gold), classes))
    wrong = (gold + 1) % classes
    probs[np.arange(len(gold)), np.where(correct, gold, wrong)] = 0.6 + rng.uniform(0, 0.3, len(gold))
    probs /= probs.sum(1, keepdims=True)
    return st.RowPredictions(np.array([f"r{i}" for i in range(len(gold))]), gold=gold, probs=probs, fingerprint="f")


@pytest.fixture
def rows500() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 500)
    better = np.zeros(500, bool)
    better[:400] = True  # right on 400 rows
    worse = better.copy()
    worse[rng.choice(400, 30, replace=False)] = False  # wrong on 30 of those: 30 more right for `better`
    return gold, better, worse


def test_metrics_match_their_reference_definitions():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 300)
    p = classifier(gold, rng.random(300) < 0.7, classes=3)
    full = np.arange(300)[None]
    assert st.accuracy(p, full)[0] == pytest.approx(accuracy_score(gold, p.predicted))
    assert st.f1_macro(p, full)[0] == pytest.approx(f1_score(gold, p.predicted, average="macro"))
    assert st.f1_weighted(p, full)[0] == pytest.approx(f1_score(gold, p.predicted, average="weighted"))
    assert st.auroc(p, full)[0] == pytest.approx(roc_auc_score(gold, p.probs, multi_class="ovr", average="macro"))
    binary = classifier(gold % 2, rng.random(300) < 0.8)
    binary.probs[:20, 1] = 0.5  # ties count one half
    assert st.auroc(binary, full)[0] == pytest.approx(roc_auc_score(gold % 2, binary.probs[:, 1]))
    reg = st.RowPredictions(np.arange(300).astype(str), gold=rng.normal(size=300), value=rng.normal(size=300))
    assert st.rmse(reg, full)[0] == pytest.approx(math.sqrt(mean_squared_error(reg.gold, reg.value)))
    # one resample: the metric of exactly those rows (with repeats)
    idx = rng.integers(0, 300, size=(1, 300))
    assert st.f1_macro(p, idx)[0] == pytest.approx(f1_score(gold[idx[0]], p.predicted[idx[0]], average="macro"))


def test_entity_f1_matches_seqeval_and_resamples_sentences():
    gold = ["B-ORG I-ORG O B-PER", "O O B-LOC", "B-PER O", "O O O"]
    pred = ["B-ORG I-ORG O O", "O B-LOC I-LOC", "B-PER O", "O B-ORG -"]
    counts = _entity_counts(gold, pred)
    p = st.RowPredictions(np.arange(4).astype(str), entities=counts)
    predicted = [["O" if t == "-" else t for t in q.split()] for q in pred]  # a cut word reads as O
    expected = seqeval_f1([g.split() for g in gold], predicted)
    assert st.entity_f1(p, np.arange(4)[None])[0] == pytest.approx(expected)
    assert st.entity_f1(p, np.array([[2, 2], [3, 3]])).tolist() == [1.0, 0.0]  # a perfect / an all-wrong resample


def test_identical_models_give_p_one_and_an_interval_around_zero(rows500):
    gold, better, _ = rows500
    a, b = classifier(gold, better), classifier(gold, better)
    result = st.paired_bootstrap(st.accuracy, [a], [b], resamples=500, seed=3)
    assert result.delta == 0 and result.p_value == 1.0 and result.low <= 0 <= result.high
    assert st.mcnemar(better, better).p_value == 1.0


def test_thirty_more_right_rows_of_500_are_significant_and_mcnemar_matches_the_closed_form(rows500):
    gold, better, worse = rows500
    a, b = classifier(gold, better, seed=1), classifier(gold, worse, seed=2)
    result = st.paired_bootstrap(st.accuracy, [a], [b], resamples=2000, seed=0)
    assert result.delta == pytest.approx(30 / 500)
    assert result.p_value < 0.05 and result.low > 0
    test = st.mcnemar(better, worse)  # b = 30, c = 0: chi-square with continuity, (|30 - 0| - 1)^2 / 30
    assert (test.a_only, test.b_only, test.method) == (30, 0, "chi-square, continuity-corrected")
    assert test.statistic == pytest.approx(29**2 / 30)
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(29**2 / 30 / 2)))  # chi2(1) survival, closed form
    small = st.mcnemar(np.r_[np.ones(10), np.zeros(2)].astype(bool), np.r_[np.zeros(10), np.ones(2)].astype(bool))
    assert small.method == "exact binomial"  # 12 discordant rows: 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert small.p_value == pytest.approx(2 * (math.comb(12, 0) + math.comb(12, 1) + math.comb(12, 2)) / 2**12)


def test_bootstrap_interval_is_seeded_and_averages_seeds(rows500):
    gold, better, worse = rows500
    runs = [classifier(gold, better), classifier(gold, worse)]
    first = st.bootstrap(st.accuracy, runs, resamples=300, seed=7)
    assert first == st.bootstrap(st.accuracy, runs, resamples=300, seed=7)
    assert first != st.bootstrap(st.accuracy, runs, resamples=300, seed=8)
    assert first.estimate == pytest.approx((400 + 370) / 2 / 500) and first.low < first.estimate < first.high
    # the interval's width is that of a proportion over 500 rows: ~ 2 * 1.96 * sqrt(p (1 - p) / 500)
    assert first.high - first.low == pytest.approx(2 * 1.96 * math.sqrt(0.77 * 0.23 / 500), rel=0.25)


def test_different_test_splits_are_refused_for_paired_tests(rows500):
    gold, better, _ = rows500
    a, b = classifier(gold, better), classifier(gold, better)
    b.fingerprint = "other"
    with pytest.raises(st.StatsError, match="different test splits"):
        st.paired_bootstrap(st.accuracy, [a], [b])
    c = classifier(gold[:400], better[:400])
    with pytest.raises(st.StatsError, match="different test rows"):
        st.paired_bootstrap(st.accuracy, [a], [c])


def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = st.holm([0.2, math.nan, 0.6])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.6)


def test_t_interval_matches_the_closed_form():
    interval = st.t_interval([0.80, 0.82, 0.84])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t_{0.975, 2}
    assert interval.estimate == pytest.approx(0.82)
    assert (interval.low, interval.high) == pytest.approx((0.82 - half, 0.82 + half))
    assert math.isnan(st.t_interval([0.8]).low)


def test_friedman_and_nemenyi_match_demsar_2006():
    result = st.friedman(DEMSAR, ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"])
    assert result.average_ranks == pytest.approx([3.143, 2.000, 2.893, 1.964], abs=1e-3)
    assert result.chi2 == pytest.approx(9.28, abs=0.005) and result.f_statistic == pytest.approx(3.69, abs=0.005)
    assert result.p_f < 0.05  # F(3, 39) critical value 2.85: the null hypothesis is rejected
    # Demšar's Table 5(a): q_0.05 for k = 2..10; CD = 2.569 sqrt(4 * 5 / (6 * 14)) = 1.25
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    assert [st.nemenyi_q(k) for k in range(2, 11)] == pytest.approx(table, abs=1e-3)
    assert st.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    # lower is better flips the ranks
    assert st.friedman(-DEMSAR, result.strategies, higher_better=False).average_ranks == result.average_ranks


def test_cd_diagram_groups_strategies_within_the_critical_difference(tmp_path):
    assert st.cliques([1.0, 1.5, 3.0, 3.2], cd=1.0) == [(0, 1), (2, 3)]
    assert st.cliques([1.0, 2.0, 3.0], cd=0.5) == []
    path = tmp_path / "cd.png"
    st.plot_cd_diagram(["a", "b", "c", "d"], [3.143, 2.0, 2.893, 1.964], st.nemenyi_cd(4, 14), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(st.StatsError, match="2 tasks"):
        st.friedman(DEMSAR[:1], ["a", "b", "c", "d"])
