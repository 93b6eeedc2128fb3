"""finexp-eval on checkpoints of every file-based problem type: NER, generation, long documents.

Each test trains a tiny run, evaluates its best checkpoint on the run's own test split (the test metrics must be the
training run's), then on a new file in the problem type's format, then on a file of the wrong format (a one-line
error naming the file).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from finexp import FinexpError
from finexp.evaluate import evaluate
from finexp.problems.token_classification_training import TokenObjective
from finexp.problems.training_module import TrainingModule
from finexp.train import train
from test_generation import GPT, QA
from test_long_document import FILLER
from test_ner import sentences, write_conll

RECORDS = ("status", "checkpoint", "data", "data_fingerprint", "same_test_split_as_training", "rows")


def evaluate_in(make_cfg, tmp_path: Path, name: str, ckpt: str, *overrides: str) -> tuple[dict, Path]:
    """``finexp-eval ckpt_path=ckpt ...`` writing into ``tmp_path/name``; returns its metrics and directory."""
    cfg = make_cfg(
        f"ckpt_path={ckpt}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        *overrides,
        config_name="eval",
        fast=False,
    )
    cfg.paths.output_dir = str(tmp_path / name)
    return evaluate(cfg), Path(cfg.paths.output_dir)


def assert_same_test_metrics(evaluated: dict, run_dir: str) -> None:
    """Every ``test/`` metric of the training run's metrics.json, reproduced to 1e-6."""
    trained = json.loads((Path(run_dir) / "metrics.json").read_text())
    keys = [k for k in trained if k.startswith("test/")]
    assert "test/loss" in keys and set(keys) <= set(evaluated)
    for key in keys:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def assert_one_line_error(make_cfg, tmp_path: Path, ckpt: str, bad: Path, match: str) -> None:
    with pytest.raises(FinexpError, match=match) as err:
        evaluate_in(make_cfg, tmp_path, "eval-bad", ckpt, f"data_path={bad}")
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_ner_checkpoint_evaluates_per_sentence_with_the_entity_report(make_cfg, tmp_path):
    path = write_conll(tmp_path / "loans.conll", sentences(60))
    cfg = make_cfg("task=ner", f"data.path={path}", "trainer.max_epochs=2", "optimizer.lr=3e-3")
    trained = train(cfg)
    run_report = Path(cfg.paths.output_dir) / "entity_report.json"
    written = run_report.stat().st_mtime_ns

    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval", trained["best_checkpoint"])
    assert_same_test_metrics(evaluated, cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(RECORDS) <= set(saved) and saved["same_test_split_as_training"] is True and saved["rows"] == 12
    assert saved["test/f1"] == pytest.approx(trained["test/f1"], abs=1e-6)
    report = json.loads((out / "entity_report.json").read_text())
    assert {"ORG", "PER", "LOC", "micro"} <= set(report) and report["micro"]["f1"] == pytest.approx(saved["test/f1"])
    assert run_report.stat().st_mtime_ns == written  # the training run's report is left alone
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table.columns) == ["tokens", "tags", "predicted", "words_cut"] and len(table) == 12
    for row in table.itertuples():
        assert len(row.tokens.split()) == len(row.tags.split()) == len(row.predicted.split()) and row.words_cut == 0
        assert set(row.tags.split()) <= {"O", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-PER", "I-PER"}

    new_file = write_conll(tmp_path / "new.conll", sentences(7, seed=1), docstart=False)
    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval-file", trained["best_checkpoint"], f"data_path={new_file}")
    assert evaluated["rows"] == 7 and evaluated["same_test_split_as_training"] is False
    assert evaluated["data"] == str(new_file) and "test/f1_ORG" in evaluated
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert table["tokens"].tolist() == [" ".join(w for w, _ in s) for s in sentences(7, seed=1)]

    # out of order across batches, and a sentence cut by data.max_length: its last words are marked '-' (not scored)
    module = TrainingModule(nn.Identity(), TokenObjective(["O", "B-ORG", "I-ORG"]))
    outputs = [
        {
            "index": torch.tensor([1]),
            "tags": torch.tensor([[0, 1, 2, 0]]),
            "labels": torch.tensor([[-100, 1, -100, 0]]),
        },
        {"index": torch.tensor([0]), "tags": torch.tensor([[0, 1, 0]]), "labels": torch.tensor([[-100, 1, -100]])},
    ]
    table = module.predictions_table(outputs, ["Globex", "Acme Corp signed today"])
    assert table.to_dict("records") == [
        {"tokens": "Globex", "tags": "B-ORG", "predicted": "B-ORG", "words_cut": 0},
        {"tokens": "Acme Corp signed today", "tags": "B-ORG O - -", "predicted": "B-ORG O - -", "words_cut": 2},
    ]

    csv_file = tmp_path / "sentences.csv"  # a table where a CoNLL file belongs
    pd.DataFrame({"text": ["Acme Corp signed", "Globex Bank lent"], "label": ["a", "b"]}).to_csv(csv_file, index=False)
    assert_one_line_error(make_cfg, tmp_path, trained["best_checkpoint"], csv_file, r"sentences.csv:1: .*CoNLL")


def test_generation_checkpoint_evaluates_prompts_references_and_answers(make_cfg, tmp_path):
    rng = random.Random(0)
    rows = [dict(zip(("prompt", "response"), rng.choice(QA), strict=True)) for _ in range(40)]
    path = tmp_path / "qa.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    decoding = ["task.generation.max_new_tokens=8", "task.generation.do_sample=true"]  # sampled: seeded per batch
    cfg = make_cfg(
        *GPT, f"data.path={path}", "trainer.max_epochs=4", "optimizer.lr=1e-2", "data.batch_size=4", *decoding
    )
    trained = train(cfg)

    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval", trained["best_checkpoint"])
    assert_same_test_metrics(evaluated, cfg.paths.output_dir)
    assert {"test/exact_match", "test/rouge_l", "test/perplexity"} <= set(evaluated)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(RECORDS) <= set(saved) and saved["rows"] == 8 and saved["same_test_split_as_training"] is True
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table.columns) == ["prompt", "reference", "generated", "exact_match", "rouge_l"] and len(table) == 8
    assert set(table["prompt"]) <= {q for q, _ in QA} and set(table["reference"]) <= {a for _, a in QA}
    assert table["rouge_l"].mean() == pytest.approx(saved["test/rouge_l"], abs=1e-6)  # the rows are what was scored
    assert table["exact_match"].mean() == pytest.approx(saved["test/exact_match"], abs=1e-6)

    new_file = tmp_path / "new.csv"  # another format of the same columns
    pd.DataFrame(rows[:5]).to_csv(new_file, index=False)
    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval-file", trained["best_checkpoint"], f"data_path={new_file}")
    assert evaluated["rows"] == 5 and evaluated["same_test_split_as_training"] is False
    assert pd.read_csv(out / "predictions.csv")["prompt"].tolist() == [r["prompt"] for r in rows[:5]]

    wrong = tmp_path / "questions.csv"
    pd.DataFrame({"question": ["how do i reset my pin"], "answer": ["in the app"]}).to_csv(wrong, index=False)
    assert_one_line_error(make_cfg, tmp_path, trained["best_checkpoint"], wrong, r"'prompt'")


def documents(n: int, seed: int = 0) -> pd.DataFrame:
    """Documents of 40-120 words; the non-compliant ones hide one alarming sentence somewhere."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(40, 120))]
        if i % 2:
            at = rng.randint(0, len(words))
            words[at:at] = ["undisclosed", "related", "party", "loans", "breach", "the", "covenant"]
        rows.append({"text": " ".join(words), "label": "non_compliant" if i % 2 else "compliant"})
    return pd.DataFrame(rows)


def test_long_document_checkpoint_evaluates_one_row_per_document(make_cfg, tmp_path):
    path = tmp_path / "reviews.csv"
    documents(40).to_csv(path, index=False)
    task = ["task=compliance_review", f"data.path={path}", "task.positive_label=non_compliant"]
    window = ["task.window.size=32", "task.window.stride=24", "task.window.aggregate=max"]
    cfg = make_cfg(*task, *window, "task.class_weights=balanced", "trainer.max_epochs=1")
    trained = train(cfg)

    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval", trained["best_checkpoint"])
    assert_same_test_metrics(evaluated, cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(RECORDS) <= set(saved) and saved["rows"] == saved["test/documents"] == 8
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == ["text", "label", "predicted", "prob_compliant", "prob_non_compliant", "windows"]
    assert len(table) == 8 and table["windows"].sum() == saved["test/windows"]
    assert table[["prob_compliant", "prob_non_compliant"]].sum(axis=1).tolist() == pytest.approx([1.0] * 8)
    accuracy = (table["label"] == table["predicted"]).mean()
    assert accuracy == pytest.approx(saved["test/accuracy"], abs=1e-6)  # the documents' rows are what was scored
    assert ((table["prob_non_compliant"] >= 0.5) == (table["predicted"] == "non_compliant")).all()

    new_file = tmp_path / "new_reviews.jsonl"
    documents(6, seed=1).to_json(new_file, orient="records", lines=True)
    evaluated, out = evaluate_in(make_cfg, tmp_path, "eval-file", trained["best_checkpoint"], f"data_path={new_file}")
    assert evaluated["rows"] == evaluated["test/documents"] == 6 and evaluated["same_test_split_as_training"] is False
    assert math.isfinite(evaluated["test/loss"])  # the class weights come from the checkpoint (no train split here)
    assert pd.read_csv(out / "predictions.csv")["text"].tolist() == documents(6, seed=1)["text"].tolist()

    wrong = tmp_path / "filings.csv"
    documents(4).rename(columns={"text": "body"}).to_csv(wrong, index=False)
    assert_one_line_error(make_cfg, tmp_path, trained["best_checkpoint"], wrong, r"'text'")
