"""data.hf_dataset: a Hugging Face dataset written with save_to_disk in the test (no network) as the data source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import sentiment_frame
from finexp import build
from finexp.data.sources import DataError

datasets = pytest.importorskip("datasets")  # finexp[hf]


def save_sentiment(directory: Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, list[str]]:
    """Headlines as ``sentence`` with a ``ClassLabel`` ``label`` (ids on disk), one split per name; returns the
    sentences of each split."""
    frame = sentiment_frame(120).sample(frac=1.0, random_state=0)  # shuffled: labels alternate in file order
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["bearish", "bullish"])}
    )
    parts = {name: frame.iloc[i :: len(splits)] for i, name in enumerate(splits)}
    table = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"sentence": part["headline"].tolist(), "label": (part["sentiment"] == "bullish").astype(int).tolist()},
                features=features,
            )
            for name, part in parts.items()
        }
    )
    table.save_to_disk(str(directory))
    return {name: part["headline"].tolist() for name, part in parts.items()}


def hf_cfg(make_cfg, directory: Path | str, *extra: str):
    return make_cfg(
        "task=text_classification",
        f"data.hf_dataset={directory}",
        "+data.hf_columns={sentence: headline, label: sentiment}",
        "task.text_column=headline",
        "task.label_column=sentiment",
        *extra,
    )


def test_saved_dataset_trains_with_its_splits_and_is_recorded(make_cfg, tmp_path):
    sentences = save_sentiment(tmp_path / "ds")
    cfg = hf_cfg(make_cfg, tmp_path / "ds", "trainer.max_epochs=1", "data.batch_size=16")
    from finexp.train import train

    train(cfg)
    info = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())
    source = info["data_source"]
    assert source["hf_dataset"] == str(tmp_path / "ds") and source["local"] is True
    assert source["splits"] == {"train": "train", "test": "test"} and source["rows"] == {"train": 60, "test": 60}
    assert source["columns"] == {"sentence": "headline", "label": "sentiment"} and source["fingerprints"]["test"]
    assert info["labels"] == ["bearish", "bullish"]  # ClassLabel ids read as their names
    assert info["rows"] == {"train": 54, "val": 6, "test": 60}  # the dataset's test split; val carved from train

    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    assert sorted(datamodule.texts["test"]) == sorted(sentences["test"])


def test_one_split_is_split_by_finexp(make_cfg, tmp_path):
    save_sentiment(tmp_path / "ds", ("train", "other"))
    cfg = hf_cfg(make_cfg, tmp_path / "ds", "data.hf_split=train")
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    assert {name: len(d) for name, d in datamodule.datasets.items()} == {"train": 42, "val": 6, "test": 12}
    assert datamodule.run_records["data_source"]["splits"] == {"all": "train"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.hf_split=dev", r"data\.hf_split='dev' is not a split of .*; splits: train, test"),
        ("+data.hf_columns={sentence: headline, score: sentiment}", r"data\.hf_columns names 'score'"),
    ],
)
def test_bad_split_or_column_names_the_key(make_cfg, tmp_path, override, message):
    save_sentiment(tmp_path / "ds")
    cfg = hf_cfg(make_cfg, tmp_path / "ds", override)
    with pytest.raises(DataError, match=message):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_hub_name_while_offline_stops_with_one_message(make_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = hf_cfg(make_cfg, "takala/financial_phrasebank")
    with pytest.raises(DataError) as caught:
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()
    message = str(caught.value)
    assert "data.hf_dataset='takala/financial_phrasebank' is not a local directory" in message
    assert "hub is offline" in message and "save_to_disk" in message and "\n" not in message
