"""data.augment: EDA word operations and numeric jitter on the training split only, reproducible with the seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import text_task
from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.data.augment import Augmenter, load_synonyms
from finexp.data.sources import DataError


def test_shipped_financial_synonyms_are_symmetric_and_never_flip_direction():
    synonyms = load_synonyms()
    assert "earnings" in synonyms["profit"] and "profit" in synonyms["earnings"]
    assert "fall" not in synonyms["rise"] and "loss" not in synonyms.get("profit", [])


def test_word_operations_change_copies_reproducibly():
    synonyms = {"profit": ["earnings"], "rises": ["climbs"]}
    frame = pd.DataFrame({"text": ["Quarterly profit rises sharply at the bank today"] * 20, "y": ["up"] * 20})
    augment = Augmenter(copies=2, ops=["synonym"], probability=1.0, synonyms=synonyms, seed=1)
    out, record = augment(frame, "text")
    assert len(out) == 60 and record["rows_added"] == 40
    assert out["text"].iloc[:20].tolist() == frame["text"].tolist()  # originals first, untouched
    assert set(out["text"].iloc[20:]) == {"Quarterly earnings climbs sharply at the bank today"}
    eda = Augmenter(copies=1, ops=["delete", "swap"], probability=0.3, synonyms=synonyms, seed=7)
    first, second = eda(frame, "text")[0], eda(frame, "text")[0]
    assert first.equals(second)  # same seed, same copies
    copies = first["text"].iloc[20:]
    assert (copies != frame["text"].iloc[0]).mean() > 0.8
    assert not Augmenter(copies=1, ops=["delete", "swap"], probability=0.3, seed=8)(frame, "text")[0].equals(first)


def test_numeric_jitter_of_table_rows_keeps_integers_and_missing_values():
    frame = pd.DataFrame({"income": [100, 200, 300] * 10, "ratio": [0.5, np.nan, 1.5] * 10, "job": ["a"] * 30})
    out, _ = Augmenter(copies=1, ops=["jitter"], jitter_scale=0.1, seed=0)(frame, None, ["income", "ratio"])
    copy = out.iloc[30:]
    assert (
        pd.api.types.is_integer_dtype(copy["income"])
        and (copy["income"].to_numpy() != frame["income"].to_numpy()).any()
    )
    assert copy["ratio"].isna().sum() == 10 and (copy["job"] == "a").all()
    assert (copy["income"] / frame["income"].to_numpy()).between(0.6, 1.4).all()
    text = Augmenter(ops=["jitter"], jitter_scale=0.1).augment_text("revenue 120.50 up 7%", np.random.default_rng(0))
    assert text != "revenue 120.50 up 7%" and text.split()[1].count(".") == 1 and len(text.split()[1]) >= 5
    with pytest.raises(DataError, match="need a text task"):
        Augmenter(copies=1, ops=["swap"])(frame, None, ["income"])


def test_only_the_training_split_is_augmented(make_cfg, sentiment_csv):
    def prepared(*overrides: str):
        cfg = make_cfg(*text_task(sentiment_csv), *overrides)
        datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
        datamodule.prepare()
        return datamodule

    plain = prepared()
    augmented = prepared("data.augment.copies=2", "data.augment.probability=0.3")
    again = prepared("data.augment.copies=2", "data.augment.probability=0.3")
    assert len(augmented.datasets["train"]) == 3 * len(plain.datasets["train"])
    for split in ("val", "test"):  # never augmented: the same rows as a run without augmentation
        assert augmented.fingerprints[split] == plain.fingerprints[split]
        assert len(augmented.datasets[split]) == len(plain.datasets[split])
    assert augmented.fingerprints["train"] == again.fingerprints["train"] != plain.fingerprints["train"]
    assert augmented.augment_record["rows_added"] == 2 * len(plain.datasets["train"])
    few = prepared("data.k_shot=4", "data.augment.copies=1")  # the K-shot sample first, then its copies
    assert len(few.datasets["train"]) == 16


def test_bad_augment_settings_are_rejected(make_cfg, sentiment_csv):
    base = [*text_task(sentiment_csv), "data.augment.copies=1"]
    with pytest.raises(ConfigError, match=r"data\.augment\.ops='shuffle'"):
        validate_config(make_cfg(*base, "data.augment.ops=[shuffle]"))
    with pytest.raises(ConfigError, match="privacy=label_dp"):
        validate_config(make_cfg(*base, "privacy=label_dp"))
    with pytest.raises(DataError, match="no such file"):
        build.augmenter_from(make_cfg(*base, "data.augment.synonyms=/nonexistent.txt"))
