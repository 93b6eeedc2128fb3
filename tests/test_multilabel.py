"""Multi-label classification (``task.problem=multilabel``): label sets from one cell or from 0/1 columns, BCE,
per-label and micro/macro F1."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from finexp import build, recipe
from finexp.config import ConfigError, validate_config
from finexp.data.sources import DataError
from finexp.problems.multilabel_training import MultiLabelObjective
from finexp.problems.training_module import TrainingModule
from finexp.train import train

ISSUES = {
    "fees": ["charged an overdraft fee twice", "a monthly fee appeared"],
    "fraud": ["unauthorized card payment", "my account was hacked"],
    "late payment": ["payment reported late", "late charge on time payment"],
}


def complaints_frame(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Each complaint mentions zero to two issues; its tags are exactly the issues it mentions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = rng.sample(sorted(ISSUES), k=rng.choice([0, 1, 1, 2]))
        text = " and ".join(rng.choice(ISSUES[t]) for t in tags) or "question about opening hours"
        rows.append({"id": i, "text": f"customer says {text}", "tags": "|".join(tags)})
    return pd.DataFrame(rows)


@pytest.fixture
def complaints_csv(tmp_path: Path) -> Path:
    path = tmp_path / "complaints.csv"
    complaints_frame().to_csv(path, index=False)
    return path


def test_multilabel_trains_with_per_label_metrics(make_cfg, complaints_csv):
    cfg = make_cfg(
        "task=complaint_tags",
        f"data.path={complaints_csv}",
        "trainer.max_epochs=15",
        "optimizer.lr=3e-3",
        "data.batch_size=16",
        "callbacks.early_stopping=null",  # val F1 sits at 0 for the first epochs, while every tag is still "off"
    )
    metrics = train(cfg)
    assert metrics["monitor"] == "val/f1_macro"
    per_label = {"test/f1_fees", "test/f1_fraud", "test/f1_late_payment"}
    assert per_label | {"test/f1_micro", "test/f1_macro", "test/exact_match", "val/f1_macro"} <= set(metrics)
    # each tag has its own words: every tag is learned (0.95-1.0 over seeds), and most complaints get exactly
    # their tag set (a guess per tag gets 1 in 8)
    assert all(metrics[k] > 0.8 for k in per_label), {k: metrics[k] for k in per_label}
    assert metrics["test/exact_match"] > 0.8 and metrics["test/f1_micro"] > 0.85


def test_label_sets_from_one_cell(make_cfg, complaints_csv):
    cfg = make_cfg("task=complaint_tags", f"data.path={complaints_csv}")
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    assert dm.label_names == ["fees", "fraud", "late payment"]
    targets = dm.datasets["train"].labels
    assert targets.dtype == torch.float32 and targets.shape == (105, 3)
    frame = dm.splits.train
    for row, tags in zip(targets.tolist(), frame["tags"], strict=True):
        assert [name for name, on in zip(dm.label_names, row, strict=True) if on] == list(tags)
    assert (targets.sum(1) == 0).any() and (targets.sum(1) == 2).any()  # rows with no tag and with two
    recipe.settle(cfg, dm)  # as finexp-train does: the null lr becomes the adapter's
    model = build.model_from(cfg, dm.num_labels, build.tokenizer_from(cfg))
    module = build.module_from(cfg, model, dm)
    assert isinstance(module.loss_fn, torch.nn.BCEWithLogitsLoss) and model.head.out_features == 3


def test_label_sets_from_flag_columns(make_cfg, tmp_path):
    frame = complaints_frame(80)
    for tag in ISSUES:
        frame[tag.replace(" ", "_")] = [("yes" if tag in tags.split("|") else "no") for tags in frame["tags"]]
    frame.drop(columns=["tags", "text"]).assign(note=frame["text"]).to_csv(tmp_path / "flags.csv", index=False)
    cfg = make_cfg(
        "task=complaint_tags",
        f"data.path={tmp_path / 'flags.csv'}",
        "task.text_column=null",
        "task.label_separator=null",
        "task.label_columns=[fees,fraud,late_payment]",
        "task.exclude_columns=[id]",
    )
    validate_config(cfg)
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    assert dm.label_names == ["fees", "fraud", "late_payment"]
    assert dm.serialized_columns == ["note"]  # the flag columns are the labels, never the input
    expected = [
        [float(tag in tags) for tag in ISSUES] for tags in frame.set_index("id").loc[dm.splits.train["id"], "tags"]
    ]
    assert dm.datasets["train"].labels.tolist() == expected


def test_missing_label_column_is_named(make_cfg, complaints_csv):
    cfg = make_cfg("task=complaint_tags", f"data.path={complaints_csv}", "task.label_column=issues")
    with pytest.raises(DataError, match=r"task.label_column.*'issues'"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()
    cfg = make_cfg(
        "task=complaint_tags",
        f"data.path={complaints_csv}",
        "task.label_separator=null",
        "task.label_columns=[fees,chargeback]",
    )
    with pytest.raises(DataError, match=r"task.label_columns\[0\].*'fees'"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_flag_column_with_other_values_is_named(make_cfg, tmp_path):
    frame = complaints_frame(40).assign(fees="maybe", fraud=0)
    frame.to_csv(tmp_path / "bad.csv", index=False)
    cfg = make_cfg(
        "task=complaint_tags",
        f"data.path={tmp_path / 'bad.csv'}",
        "task.label_column=issue_set",
        "task.label_separator=null",
        "task.label_columns=[fees,fraud]",
    )
    with pytest.raises(DataError, match=r"column 'fees' must hold 0/1 .* found \['maybe'\]"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_multilabel_needs_one_label_source(make_cfg, complaints_csv):
    cfg = make_cfg("task=complaint_tags", f"data.path={complaints_csv}", "task.label_columns=[fees]")
    with pytest.raises(ConfigError, match=r"exactly one of task.label_separator .* and task.label_columns"):
        validate_config(cfg)
    cfg = make_cfg("task=complaint_tags", f"data.path={complaints_csv}", "task.label_separator=null")
    with pytest.raises(ConfigError, match=r"given: neither"):
        validate_config(cfg)


def test_predictions_table_lists_label_sets_in_dataset_order():
    module = TrainingModule(torch.nn.Identity(), MultiLabelObjective(["fees", "fraud"]))
    outputs = [
        {"index": torch.tensor([1]), "probs": torch.tensor([[0.2, 0.7]]), "labels": torch.tensor([[0.0, 1.0]])},
        {"index": torch.tensor([0]), "probs": torch.tensor([[0.6, 0.5]]), "labels": torch.tensor([[1.0, 0.0]])},
    ]
    table = module.predictions_table(outputs, ["first", "second"])
    assert table[["text", "labels", "predicted"]].values.tolist() == [
        ["first", "fees", "fees|fraud"],
        ["second", "fraud", "fraud"],
    ]
    assert table["prob_fraud"].tolist() == pytest.approx([0.5, 0.7])
