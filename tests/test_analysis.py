"""finexp.analysis on fixed numbers: calibration and fairness against hand-computed values, thresholds, and the
report's sections present exactly when they apply."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finexp.analysis import fairness as fair
from finexp.analysis import metrics as m
from finexp.analysis.model_card import write_report
from finexp.analysis.pipeline import AnalysisOptions, Predictions, evaluation_sections, run_sections

# Four rows, binary; the positive-class probabilities and the truth.
P1 = np.array([0.95, 0.75, 0.35, 0.55])
Y = np.array([1, 0, 0, 1])
PROBS = np.stack([1 - P1, P1], 1)


def test_calibration_matches_hand_computed_values():
    # top-label confidence 0.95 0.75 0.65 0.55; predicted 1 1 0 1 -> correct 1 0 1 1.
    # 5 equal-width bins: (0.8,1]: {0.95} acc 1 | (0.6,0.8]: {0.75, 0.65} acc 0.5 conf 0.70 | (0.4,0.6]: {0.55} acc 1
    # ECE = 1/4*|1-0.95| + 2/4*|0.5-0.70| + 1/4*|1-0.55| = 0.0125 + 0.1 + 0.1125 = 0.225
    assert m.expected_calibration_error(PROBS, Y, n_bins=5) == pytest.approx(0.225)
    # Brier (binary) = mean (p - y)^2 = (0.0025 + 0.5625 + 0.1225 + 0.2025) / 4
    assert m.brier_score(PROBS, Y) == pytest.approx(0.2225)
    nll = -(math.log(0.95) + math.log(0.25) + math.log(0.65) + math.log(0.55)) / 4
    assert m.negative_log_likelihood(PROBS, Y) == pytest.approx(nll)
    bins = m.reliability_bins(PROBS, Y, n_bins=5)
    assert bins["count"].tolist() == [0, 0, 1, 2, 1]
    assert bins["accuracy"][3] == pytest.approx(0.5) and bins["confidence"][3] == pytest.approx(0.70)
    # multi-class Brier: rows (0.7,0.2,0.1|y=0) -> 0.09+0.04+0.01, (0.1,0.3,0.6|y=2) -> 0.01+0.09+0.16
    assert m.brier_score(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), np.array([0, 2])) == pytest.approx(0.2)


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated log-odds z
    over = 1 / (1 + np.exp(-3 * z))  # the same ranking, three times too confident
    probs = np.stack([1 - over, over], 1)
    temperature = m.fit_temperature(probs[:2000], y[:2000])
    assert 2.6 < temperature < 3.4
    scaled = m.apply_temperature(probs[2000:], temperature)
    before, after = (m.expected_calibration_error(p, y[2000:]) for p in (probs[2000:], scaled))
    assert after < before / 3
    assert m.classification_summary(scaled, y[2000:], ["no", "yes"])["auroc"] == pytest.approx(
        m.classification_summary(probs[2000:], y[2000:], ["no", "yes"])["auroc"]
    )


def test_ks_gini_and_thresholds():
    summary = m.classification_summary(PROBS, Y, ["no", "yes"])
    # positives 0.95, 0.55 vs negatives 0.75, 0.35: 3 of 4 pairs ranked right
    assert summary["auroc"] == pytest.approx(0.75) and summary["gini"] == pytest.approx(0.5)
    assert summary["ks"] == pytest.approx(0.5)  # at t=0.95: TPR 0.5, FPR 0
    assert summary["confusion_matrix"] == [[1, 1], [0, 2]]
    at_half = m.metrics_at_threshold(P1, Y, 0.5)
    assert at_half["precision"] == pytest.approx(2 / 3) and at_half["recall"] == 1.0
    assert at_half["approval_rate"] == pytest.approx(0.25)  # approved = predicted negative (favorable=0)
    assert m.f1_optimal_threshold(P1, Y) == pytest.approx(0.55)  # F1 0.8 at 0.55 beats 0.667 at 0.95/0.35

    scores = np.linspace(0.01, 0.99, 100)
    for rate in (0.3, 0.7):
        low = m.approval_rate_threshold(scores, rate, favorable=0)
        assert (scores < low).mean() == pytest.approx(rate)  # the lowest-risk share is approved
        high = m.approval_rate_threshold(scores, rate, favorable=1)
        assert (scores >= high).mean() == pytest.approx(rate)
    table = m.threshold_table(P1, Y, P1, Y, approval_rate=0.5)
    assert list(table) == ["default_0.5", "val_f1_max", "approval_rate_0.5"]
    assert table["approval_rate_0.5"]["approval_rate"] == pytest.approx(0.5)
    assert list(m.threshold_table(P1, Y, None, None, approval_rate=0.5)) == ["default_0.5"]


# Fairness, hand-computed. Favorable outcome = label 1 here (then flipped below).
#   group A: y 1 1 0 0, score .9 .4 .6 .2 -> predicted (>=.5) 1 0 1 0: selection 2/4, TPR 1/2, FPR 1/2, AUROC 3/4
#   group B: y 1 1 1 0, score .7 .3 .45 .1 -> predicted 1 0 0 0: selection 1/4, TPR 1/3, FPR 0, AUROC 1
FAIR_Y = np.array([1, 1, 0, 0, 1, 1, 1, 0])
FAIR_S = np.array([0.9, 0.4, 0.6, 0.2, 0.7, 0.3, 0.45, 0.1])
FAIR_G = np.array(["A"] * 4 + ["B"] * 4)


@pytest.mark.parametrize("favorable", [1, 0])
def test_fairness_matches_hand_computed_example(favorable):
    y, s = (FAIR_Y, FAIR_S) if favorable == 1 else (1 - FAIR_Y, 1 - FAIR_S)  # the same people, labels flipped
    predicted = (s >= 0.5).astype(int) if favorable == 1 else (s > 0.5).astype(int)
    report = fair.fairness_report(y, predicted, s, FAIR_G, favorable=favorable)
    a, b = report["by_group"]["A"], report["by_group"]["B"]
    assert (a["count"], b["count"]) == (4, 4)
    assert (a["selection_rate"], a["tpr"], a["fpr"], a["auroc"]) == pytest.approx((0.5, 0.5, 0.5, 0.75))
    assert (b["selection_rate"], b["tpr"], b["fpr"], b["auroc"]) == pytest.approx((0.25, 1 / 3, 0.0, 1.0))
    assert report["demographic_parity_difference"] == pytest.approx(0.25)
    assert report["equal_opportunity_difference"] == pytest.approx(0.5 - 1 / 3)
    assert report["equalized_odds_difference"] == pytest.approx(0.5)  # max(TPR gap 1/6, FPR gap 1/2)
    assert report["disparate_impact_ratio"] == pytest.approx(0.5)
    assert report["four_fifths_violated"] and b["four_fifths_flag"] and not a["four_fifths_flag"]
    assert b["impact_ratio"] == pytest.approx(0.5) and a["impact_ratio"] == pytest.approx(1.0)


def test_group_thresholds_equalize_opportunity_on_held_out_rows():
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        groups = rng.choice(["A", "B"], n)
        y = (rng.random(n) < 0.3).astype(int)  # 1 = default (adverse); favorable = 0
        score = np.clip(0.25 + 0.35 * y + rng.normal(0, 0.15, n) + np.where(groups == "B", 0.15, 0.0), 0, 1)
        return score, y, groups

    val, test = draw(3000), draw(3000)
    cuts = fair.equal_opportunity_thresholds(val[0], val[1], val[2], 0.5, favorable=0)
    assert cuts["B"] > cuts["A"]  # group B is scored riskier for the same truth, so it gets a higher cut
    before = fair.fairness_report(test[1], (test[0] >= 0.5).astype(int), test[0], test[2], favorable=0)
    mitigated = fair.predict_with_group_thresholds(test[0], test[2], cuts, 0.5)
    after = fair.fairness_report(test[1], mitigated, test[0], test[2], favorable=0)
    assert before["equal_opportunity_difference"] > 0.15
    assert after["equal_opportunity_difference"] < before["equal_opportunity_difference"] / 3
    on_val = fair.predict_with_group_thresholds(val[0], val[2], cuts, 0.5)
    assert fair.fairness_report(val[1], on_val, val[0], val[2], favorable=0)["equal_opportunity_difference"] < 0.01
    assert all(type(g) is str for g in cuts)


CONFIG = {
    "task": {"name": "loans", "description": "who defaults", "sensitive_column": None},
    "data": {"path": "loans.csv"},
    "model": {"name": "tiny_bert", "name_or_path": None, "pooling": "mean"},
    "choices": {"adapter": "lora"},
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
    "privacy": {"name": "none", "mask_pii": False},
    "seed": 3,
}
METRICS = {"params/trainable": 10.0, "params/total": 100.0, "params/trainable_pct": 10.0, "time/fit_s": 2.0}


def _report(tmp_path, labels, probs, y, groups=None, config=CONFIG, metrics=METRICS, command=None, **options):
    out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    counts = {"train": [3] * len(labels), "test": np.bincount(y, minlength=len(labels)).tolist()}
    sections = run_sections(config, labels, counts, {"test": "ab" * 20}, metrics, command)
    more, results = evaluation_sections(
        out,
        labels,
        Predictions(probs, y),
        Predictions(probs, y),
        AnalysisOptions(ece_bins=5, **options),
        "test",
        groups,
        groups,
    )
    write_report(out, "report", sections + more)
    text = (out / "report.md").read_text()
    return {line[3:] for line in text.splitlines() if line.startswith("## ")}, text, results, out


def test_report_sections_appear_only_when_they_apply(tmp_path):
    base = {"Task and data", "Model and strategy", "Test metrics", "Calibration"}
    titles, text, _, out = _report(tmp_path, ["no", "yes"], PROBS, Y)
    assert titles == base | {"Threshold analysis"}  # binary, no sensitive column, no privacy, no command
    assert "Trainable parameters: 10 of 100 (10.00%)" in text and "T = " in text
    for name in ("confusion_matrix", "roc_curve", "pr_curve", "reliability_diagram"):
        assert (out / f"{name}.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4 and 'src="confusion' not in html  # self-contained

    titles, text, results, out = _report(tmp_path, ["no", "yes"], PROBS, Y, groups=FAIR_G[:4], group_thresholds=True)
    assert titles == base | {"Threshold analysis", "Fairness"}
    assert "Mitigation" in text and set(results["fairness"]) == {"before", "group_thresholds", "after"}
    assert (out / "fairness_by_group.png").is_file()

    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    titles, text, _, out = _report(tmp_path, ["a", "b", "c"], three, np.array([0, 2, 1, 1]))
    assert titles == base  # multi-class: no thresholds, no fairness, no ROC
    assert not (out / "roc_curve.png").exists() and "roc_curve.png" not in text

    private = {**CONFIG, "privacy": {"name": "dp_sgd", "target_epsilon": 8.0, "mask_pii": False}}
    spent = {**METRICS, "privacy/epsilon": 7.9, "privacy/delta": 1e-5}
    titles, text, _, _ = _report(
        tmp_path, ["no", "yes"], PROBS, Y, config=private, metrics=spent, command="finexp-train privacy=dp_sgd"
    )
    assert {"Privacy", "Reproduce"} <= titles and "7.9000" in text and "finexp-train privacy=dp_sgd" in text
    # the eval report has no fit: no fit time, no trainable share
    titles, text, _, _ = _report(tmp_path, ["no", "yes"], PROBS, Y, metrics={})
    assert "fit time" not in text and "Trainable" not in text


def test_favorable_label_must_be_a_label(tmp_path):
    with pytest.raises(ValueError, match="favorable_label='maybe'"):
        _report(tmp_path, ["no", "yes"], PROBS, Y, favorable_label="maybe")


def test_figures_go_to_wandb_as_images(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    from finexp.analysis.pipeline import log_images

    class Recorder(WandbLogger):
        def __init__(self) -> None:  # no W&B run: only record what would be logged
            self.logged = []

        def log_image(self, key, images, step=None, **kwargs):
            self.logged.append((key, images))

    _, _, _, out = _report(tmp_path, ["no", "yes"], PROBS, Y)
    recorder = Recorder()
    log_images([recorder, object()], out, ["roc_curve.png", "reliability_diagram.png"])
    assert recorder.logged == [
        ("analysis/roc_curve", [str(out / "roc_curve.png")]),
        ("analysis/reliability_diagram", [str(out / "reliability_diagram.png")]),
    ]
