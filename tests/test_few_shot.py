"""Few-shot data: exact K per class, seeded samples, capped validation, untouched test; fractions and sizes."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import sentiment_frame, text_task
from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.data.few_shot import SamplingPolicy, apply_sampling, k_per_class, subsample
from finexp.data.sources import DataError


def frame(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"text": f"{label} {i}", "y": label} for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_k_per_class_is_exact_seeded_and_varies_with_the_seed():
    data = frame({"neg": 30, "neu": 50, "pos": 20})
    first = k_per_class(data, "y", 8, seed=1)
    assert first["y"].value_counts().to_dict() == {"neg": 8, "neu": 8, "pos": 8}
    assert first["text"].is_unique
    assert first.equals(k_per_class(data, "y", 8, seed=1))  # reproducible
    assert set(first["text"]) != set(k_per_class(data, "y", 8, seed=2)["text"])  # another seed, other rows
    # a class's draw depends on its own rows only: adding a class leaves the others' samples unchanged
    more = k_per_class(pd.concat([data, frame({"zzz": 9})]), "y", 8, seed=1)
    assert set(more[more.y != "zzz"]["text"]) == set(first["text"])


def test_k_larger_than_a_class_names_the_class_and_its_count():
    with pytest.raises(DataError, match=r"data.k_shot=25.*'pos' has 20"):
        k_per_class(frame({"neg": 30, "pos": 20}), "y", 25, seed=0)


def test_fraction_and_size_are_stratified_and_keep_every_class():
    data = frame({"a": 80, "b": 15, "c": 5})
    kept = subsample(data, 20, seed=0, label_column="y")
    assert len(kept) == 20 and kept["y"].value_counts().to_dict() == {"a": 16, "b": 3, "c": 1}
    train, val, record = apply_sampling(data, data.iloc[:10], SamplingPolicy(train_fraction=0.5, seed=3), "y")
    assert len(train) == 50 and len(val) == 10  # validation is capped in K-shot runs only
    assert record["train_per_class"] == {"a": 40, "b": 8, "c": 2}
    unlabelled = subsample(data, 7, seed=0)  # e.g. regression: no classes to stratify by
    assert len(unlabelled) == 7
    with pytest.raises(DataError, match="cannot keep 500"):
        subsample(data, 500, seed=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.k_shot=0", "data.k_shot=0"),
        ("data.train_fraction=1.5", "data.train_fraction=1.5"),
        ("data.train_size=0", "data.train_size=0"),
    ],
)
def test_bad_sampling_values_are_rejected(make_cfg, sentiment_csv, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(make_cfg(*text_task(sentiment_csv), override))
    with pytest.raises(ConfigError, match="at most one of k_shot"):
        validate_config(make_cfg(*text_task(sentiment_csv), "data.k_shot=4", "data.train_size=10"))


def test_k_shot_datamodule_caps_val_and_keeps_the_full_runs_test_split(make_cfg, tmp_path):
    path = tmp_path / "three.csv"
    data = sentiment_frame(300)
    data.loc[data.index % 3 == 0, "sentiment"] = "neutral"
    data.to_csv(path, index=False)

    def prepared(*overrides: str):
        cfg = make_cfg(*text_task(path), *overrides)
        datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
        datamodule.prepare()
        return datamodule

    full = prepared()
    few = prepared("data.k_shot=4", "seed=5")
    again = prepared("data.k_shot=4", "seed=5")
    other = prepared("data.k_shot=4", "seed=6")
    assert few.splits.train["sentiment"].value_counts().to_dict() == {"bearish": 4, "bullish": 4, "neutral": 4}
    assert few.splits.val["sentiment"].value_counts().max() == 4 and len(full.splits.val) == 30
    assert few.fingerprints["test"] == full.fingerprints["test"]  # the test split is untouched
    assert few.label_names == full.label_names
    assert few.fingerprints["train"] == again.fingerprints["train"] != other.fingerprints["train"]
    assert set(few.splits.train["id"]) <= set(full.splits.train["id"])  # drawn from the full run's train split
    record = few.sampling_record
    assert record["k_shot"] == 4 and record["seed"] == 5 and record["train_rows_before"] == len(full.splits.train)
    assert record["train_per_class"] == {"bearish": 4, "bullish": 4, "neutral": 4}


def test_k_shot_larger_than_a_class_fails_before_training(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "data.k_shot=100")
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    with pytest.raises(DataError, match=r"data.k_shot=100: the train split has fewer than 100 rows"):
        datamodule.prepare()


def test_regression_targets_are_sampled_by_size_not_by_class(make_cfg, applicants_csv):
    overrides = ["task=table_classification", f"data.path={applicants_csv}", "task.label_column=debt"]
    overrides += ["task.problem=regression", "task.exclude_columns=[customer_id]", "task.monitor=val/rmse"]
    with pytest.raises(ConfigError, match=r"task\.problem=regression does not support data\.k_shot=4"):
        validate_config(make_cfg(*overrides, "data.k_shot=4"))
    cfg = make_cfg(*overrides, "data.train_size=50")
    validate_config(cfg)
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    assert len(datamodule.datasets["train"]) == 50 and "train_per_class" not in datamodule.sampling_record
