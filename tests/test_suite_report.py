"""A tiny benchmark suite end to end: finexp-train -m experiment=benchmark_suite (2 tasks x 3 strategies x 2 seeds on
tiny_bert) writes per-row test predictions, and finexp-report --suite turns the sweep into every section, a LaTeX
table and the critical-difference diagram."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import FAST, text_task
from finexp import report, train
from finexp.config import ConfigError, validate_config
from finexp.run_predictions import normalize_table, row_ids

TASKS, STRATEGIES, SEEDS = ("credit_scoring", "card_approval"), ("full", "freeze", "lora"), (1, 2)


@pytest.fixture
def suite_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    sweep = tmp_path / "suite"
    argv = [
        "finexp-train",
        "-m",
        "experiment=benchmark_suite",
        *FAST,
        "trainer.max_epochs=1",
        "data.max_rows=60",  # stratified: 42 train / 6 val / 12 test rows per task
        "data.max_length=48",
        f"task={','.join(TASKS)}",
        f"adapter={','.join(STRATEGIES)}",
        f"seed={','.join(map(str, SEEDS))}",
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    try:
        train.main()  # the console script's entry point, in this process (12 jobs, one after the other)
    finally:
        GlobalHydra.instance().clear()
    return sweep


def test_tiny_suite_runs_end_to_end_and_the_report_has_every_section(suite_dir, capsys):
    predictions = sorted(suite_dir.rglob("test_predictions.csv"))
    assert len(predictions) == len(TASKS) * len(STRATEGIES) * len(SEEDS)
    first = pd.read_csv(predictions[0])
    assert list(first.columns[:4]) == ["row", "row_id", "gold", "predicted"] and len(first) == 12
    assert {"prob_good", "prob_bad"} <= set(first.columns) or {"prob_yes", "prob_no"} <= set(first.columns)

    report.main([str(suite_dir), "--suite", "--baseline", "strategy=full", "--format", "latex,html", "--reproduce"])

    text = (suite_dir / "report.md").read_text()
    for section in ("## Suite table", "## Average ranks and Friedman test", "## Critical-difference diagram",
                    "## Paired comparisons", "## Per-task rows", "## Reproduce"):  # fmt: skip
        assert section in text, section
    assert "N = 2 tasks for k = 3 strategies" in text and "CD = 2.344" in text  # q_0.05(k=3) sqrt(3*4/(6*2))
    table = text.split("## Suite table")[1].split("## Average ranks")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| strategy |")]
    assert sorted(r.split(" | ")[0].strip("| ") for r in rows) == sorted(STRATEGIES)  # one row per strategy
    tex = (suite_dir / "report.tex").read_text()
    assert tex.count("{") == tex.count("}") and tex.count(r"\begin{") == tex.count(r"\end{")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    assert sorted(line.split(" & ")[0] for line in body.strip().splitlines()) == sorted(STRATEGIES)
    assert all(line.count(" & ") == len(TASKS) + 2 for line in body.strip().splitlines())
    assert re.search(r"\\textbf\{0\.\d{3}\}", body)  # the best per task in bold
    assert (suite_dir / "cd_diagram.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64" in (suite_dir / "report.html").read_text()  # the CD diagram, inlined
    long = pd.read_csv(suite_dir / "report.csv")
    assert len(long) == len(TASKS) * len(STRATEGIES) and set(long["task"]) == set(TASKS)
    assert long["baseline"].sum() == len(TASKS) and long.loc[~long["baseline"], "p_bootstrap"].notna().all()
    assert "written:" in capsys.readouterr().out


STANDARD = {  # task -> what its no-local-copy message must name
    "fpb": "takala/financial_phrasebank, config sentences_50agree",
    "fpb_allagree": "takala/financial_phrasebank, config sentences_allagree",
    "tfns": "zeroshot/twitter-financial-news-sentiment",
    "banking77": "PolyAI/banking77",
    "fiqa_sa": "pauri32/fiqa-2018",
    "fiqa_sa_3class": "pauri32/fiqa-2018",
    "finer_ord": "gtfintechlab/finer-ord",
    "german_credit": "OpenML credit-g",
}


@pytest.mark.parametrize("task", sorted(STANDARD))
def test_standard_tasks_compose_and_without_a_local_copy_name_their_dataset(make_cfg, task):
    with pytest.raises(ConfigError) as error:
        validate_config(make_cfg(f"task={task}"))
    message = str(error.value)
    assert message.startswith(f"task '{task}' needs a local copy of its dataset") and STANDARD[task] in message
    assert "\n" not in message and "data." in message  # one line, and it says which key to set
    validate_config(make_cfg(f"task={task}", "data.path=local.csv"))  # with a path the config is complete


def test_test_predictions_tables_keep_gold_and_prediction_without_texts():
    regression = pd.DataFrame({"text": ["a", "b"], "score": [0.5, -0.2], "predicted": [0.4, 0.1], "error": [-0.1, 0.3]})
    table = normalize_table(regression, "score")
    assert list(table.columns) == ["gold", "predicted", "error"] and table["gold"].tolist() == [0.5, -0.2]
    ner = pd.DataFrame({"tokens": ["Acme rose"], "tags": ["B-ORG O"], "predicted": ["B-ORG O"], "words_cut": [0]})
    assert list(normalize_table(ner).columns) == ["gold", "predicted", "words_cut"]
    generation = pd.DataFrame({"prompt": ["q"], "reference": ["a"], "generated": ["b"], "exact_match": [0.0]})
    assert list(normalize_table(generation).columns) == ["gold", "predicted", "exact_match"]
    assert row_ids(["a", "a"], ["x", "y"])[0] != row_ids(["a", "a"], ["x", "y"])[1]  # text and gold both count


def test_test_predictions_false_writes_none(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=1", "data.max_rows=40", "test_predictions=false")
    train.train(cfg)
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()
    assert not (Path(cfg.paths.output_dir) / "test_predictions.csv").exists()
