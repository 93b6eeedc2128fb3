"""End to end: finexp-train with the trust report on, integrated-gradients sanity, finexp-eval and finexp-explain."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import applicants_frame
from finexp.evaluate import evaluate
from finexp.explain import explain
from finexp.train import train

FILLER = [
    "the",
    "a",
    "client",
    "bank",
    "loan",
    "file",
    "note",
    "form",
    "review",
    "branch",
    "office",
    "record",
    "account",
    "desk",
    "call",
    "letter",
]
KEYWORDS = {"yes": "approved", "no": "declined"}


def keyword_frame(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """One word decides the label; the other words are shared noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "yes" if i % 2 else "no"
        words = rng.sample(FILLER, 5)
        words.insert(rng.randint(0, 5), KEYWORDS[label])
        rows.append({"note": " ".join(words), "decision": label})
    return pd.DataFrame(rows)


def _sections(run: Path) -> set[str]:
    return {line[3:] for line in (run / "report.md").read_text().splitlines() if line.startswith("## ")}


def test_report_and_explanations_on_a_one_word_task(make_cfg, tmp_path):
    path = tmp_path / "notes.csv"
    keyword_frame().to_csv(path, index=False)
    task = ["task=text_classification", f"data.path={path}", "task.text_column=note", "task.label_column=decision"]
    cfg = make_cfg(
        *task,
        "trainer.max_epochs=5",
        "optimizer.lr=3e-3",
        "data.batch_size=16",
        "analysis=full",
        "analysis.explain_examples=12",
        "analysis.ig_steps=24",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["test/auroc"] > 0.95  # learnt the keyword
    for key in ("test/ece", "test/brier", "test/gini", "test/ece_scaled", "analysis/temperature"):
        assert key in metrics, key
    assert json.loads((run / "metrics.json").read_text())["test/ece"] == pytest.approx(metrics["test/ece"])

    # no sensitive column, no privacy, composed in Python (no command line): those sections are absent
    assert _sections(run) == {
        "Task and data",
        "Model and strategy",
        "Training curve",
        "Test metrics",
        "Calibration",
        "Threshold analysis",
        "Explanations",
    }
    for png in ("confusion_matrix", "roc_curve", "pr_curve", "reliability_diagram", "training_curve"):
        assert (run / f"{png}.png").stat().st_size > 1000, png
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html
    assert "<span style=" in (run / "explanations.html").read_text()

    # the sanity check: the deciding word carries the largest attribution in every explained text
    analysis = json.loads((run / "analysis.json").read_text())
    examples = analysis["explanations"]["examples"]
    assert len(examples) == 12
    for example in examples:
        text, words = example["text"], example["words"]
        top = max(words, key=lambda w: abs(w[2]))
        assert text[top[0] : top[1]] in KEYWORDS.values(), (text, words)
        # and it points the right way: "approved" towards yes (the positive class), "declined" against
        assert (top[2] > 0) == (text[top[0] : top[1]] == "approved")
    top_words = analysis["explanations"]["top_words"]
    assert top_words["positive"][0]["word"] == "approved" and top_words["negative"][0]["word"] == "declined"

    # finexp-explain on the checkpoint: the same attributions, written to its own directory
    explain_cfg = make_cfg(
        f"ckpt_path={metrics['best_checkpoint']}",
        "analysis.explain_examples=4",
        "analysis.ig_steps=24",
        config_name="explain",
        fast=False,
    )
    results = explain(explain_cfg)
    out = Path(explain_cfg.paths.output_dir)
    assert (out / "explanations.html").is_file() and (out / "explanations.json").is_file()
    fresh = np.array([w for e in results["examples"] for w in e["words"]], dtype=float)
    np.testing.assert_allclose(fresh, np.array([w for e in examples[:4] for w in e["words"]]), atol=1e-4)


def test_table_task_fairness_feature_importance_and_eval_report(make_cfg, tmp_path):
    frame = applicants_frame(240)
    frame["group"] = ["g1" if i % 3 else "g2" for i in range(len(frame))]  # a protected attribute, never serialized
    path = tmp_path / "applicants.csv"
    frame.to_csv(path, index=False)
    cfg = make_cfg(
        "task=table_classification",
        f"data.path={path}",
        "task.label_column=default",
        "task.positive_label=yes",
        "task.exclude_columns=[customer_id]",
        "task.sensitive_column=group",
        "trainer.max_epochs=2",  # fairness is measured at the val approval-rate threshold: no need to learn much
        "optimizer.lr=3e-3",
        "task.class_weights=balanced",
        "analysis=full",
        "analysis.explain_examples=6",
        "analysis.ig_steps=8",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {"Fairness", "Explanations", "Threshold analysis"} <= _sections(run)
    assert 0 <= metrics["test/disparate_impact_ratio"] <= 1 and "test/equal_opportunity_difference" in metrics
    analysis = json.loads((run / "analysis.json").read_text())
    fairness = analysis["fairness"]
    assert set(fairness["before"]["by_group"]) == {"g1", "g2"} and set(fairness["group_thresholds"]) == {"g1", "g2"}
    counts = sum(g["count"] for g in fairness["before"]["by_group"].values())
    assert counts == analysis["rows"] == 48
    # attributions summed per source column, in the serialized order
    features = analysis["explanations"]["feature_importance"]
    assert list(features) == ["income", "debt", "arrears", "purpose"]
    assert all(v["mean_abs"] > 0 for v in features.values())
    assert (run / "feature_importance.png").is_file() and (run / "fairness_by_group.png").is_file()
    text = (run / "report.md").read_text()
    assert "four-fifths" in text and "Mitigation" in text

    # finexp-eval writes the same kind of report for the checkpoint (no training curve: it trains nothing)
    eval_cfg = make_cfg(f"ckpt_path={metrics['best_checkpoint']}", config_name="eval", fast=False)
    evaluated = evaluate(eval_cfg)
    out = Path(eval_cfg.paths.output_dir)
    assert _sections(out) == {
        "Task and data",
        "Model and strategy",
        "Test metrics",
        "Calibration",
        "Threshold analysis",
        "Fairness",
    }
    assert evaluated["test/ece"] == pytest.approx(metrics["test/ece"], abs=1e-6)

    # on a new file there is no validation split: nothing fitted on val, fairness at 0.5
    new = tmp_path / "new.csv"
    frame.head(30).to_csv(new, index=False)
    eval_cfg = make_cfg(f"ckpt_path={metrics['best_checkpoint']}", f"data_path={new}", config_name="eval", fast=False)
    evaluate(eval_cfg)
    analysis = json.loads((Path(eval_cfg.paths.output_dir) / "analysis.json").read_text())
    assert analysis["rows"] == 30 and "temperature" not in analysis and list(analysis["thresholds"]) == ["default_0.5"]
    assert "threshold 0.5000 (the default 0.5)" in (Path(eval_cfg.paths.output_dir) / "report.md").read_text()


def test_analysis_none_writes_no_report_and_bad_values_are_rejected(make_cfg, sentiment_csv):
    from conftest import text_task
    from finexp.config import ConfigError

    default = make_cfg(*text_task(sentiment_csv), fast=False)
    assert default.analysis.enabled and not default.analysis.explain  # every run gets a report by default
    cfg = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=1", "analysis=none")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "metrics.json").is_file() and not (run / "report.md").exists()
    assert "test/ece" not in metrics
    for override in ("analysis.approval_rate=1.5", "analysis.ece_bins=1", "analysis.fairness_at=median"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            train(make_cfg(*text_task(sentiment_csv), override))
