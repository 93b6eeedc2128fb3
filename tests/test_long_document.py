"""Long documents (task=compliance_review): overlapping windows, aggregation to documents, per-document metrics."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.data.windows import split_windows
from finexp.problems.long_document_training import DocumentAggregator, aggregate_windows
from finexp.train import train

FILLER = ["the", "company", "reported", "its", "quarterly", "results", "and", "the", "outlook", "for", "next", "year"]


@pytest.fixture
def documents_csv(tmp_path: Path) -> Path:
    """40 documents of 40-120 words; the non-compliant ones hide one alarming sentence somewhere."""
    rng = random.Random(0)
    rows = []
    for i in range(40):
        words = [rng.choice(FILLER) for _ in range(rng.randint(40, 120))]
        if i % 2:
            at = rng.randint(0, len(words))
            words[at:at] = ["undisclosed", "related", "party", "loans", "breach", "the", "covenant"]
        rows.append({"text": " ".join(words), "label": "non_compliant" if i % 2 else "compliant"})
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_windows_overlap_and_cover_the_document():
    windows = split_windows(list(range(10)), size=6, stride=3, prefix=[101], suffix=[102])
    assert windows == [[101, 0, 1, 2, 3, 102], [101, 3, 4, 5, 6, 102], [101, 6, 7, 8, 9, 102]]
    assert split_windows(list(range(10)), 6, 3, [101], [102], max_windows=2) == windows[:2]
    assert split_windows([], 6, 3, [101], [102]) == [[101, 102]]
    assert split_windows(list(range(4)), 6, 3, [101], [102]) == [[101, 0, 1, 2, 3, 102]]
    # a stride beyond the window's text would skip tokens: windows then simply touch
    assert split_windows(list(range(8)), 6, 6, [101], [102]) == [[101, 0, 1, 2, 3, 102], [101, 4, 5, 6, 7, 102]]


def test_mean_and_max_aggregate_windows_to_one_prediction_per_document():
    # document 7: two mildly "compliant" windows and one strongly "non-compliant" one; document 3: one window
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    docs = torch.tensor([7, 7, 7, 3])
    documents, mean = aggregate_windows(logits, docs, "mean")
    assert documents.tolist() == [3, 7]
    torch.testing.assert_close(mean, torch.tensor([[0.5, 0.0], [4 / 3, 1.0]]))
    _, top = aggregate_windows(logits, docs, "max")
    torch.testing.assert_close(top, torch.tensor([[0.5, 0.0], [2.0, 3.0]]))
    assert mean.argmax(-1).tolist() == [0, 0] and top.argmax(-1).tolist() == [0, 1]  # max: one window flags it

    aggregator = DocumentAggregator("max")  # windows of one document may arrive in different batches
    aggregator.update(logits[:2], torch.tensor([1, 1]), docs[:2])
    aggregator.update(logits[2:], torch.tensor([1, 0]), docs[2:])
    doc_logits, doc_labels, windows = aggregator.compute()
    assert windows == 4 and doc_labels.tolist() == [0, 1]
    torch.testing.assert_close(doc_logits, top)


def test_long_documents_train_and_are_scored_per_document(make_cfg, documents_csv):
    cfg = make_cfg(
        "task=compliance_review",
        f"data.path={documents_csv}",
        "task.positive_label=non_compliant",
        "task.window.size=32",
        "task.window.stride=24",
        "trainer.max_epochs=1",
    )
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    n_docs = {name: len(ds) for name, ds in dm.documents.datasets.items()}
    assert n_docs == {"train": 28, "val": 4, "test": 8}
    assert all(len(dm.datasets[name]) > 2 * n for name, n in n_docs.items())  # several windows per document
    assert max(dm.datasets["train"].lengths) == 32
    metrics = train(cfg)
    assert metrics["monitor"] == "val/auroc"
    assert metrics["test/documents"] == 8 and metrics["val/documents"] == 4  # the metric counts documents
    assert metrics["test/windows"] == len(dm.datasets["test"])
    assert all(key in metrics for key in ("test/auroc", "test/accuracy", "test/f1_macro", "test/loss"))


def test_window_settings_are_checked(make_cfg):
    with pytest.raises(ConfigError, match=r"task 'compliance_review' reads your files: set data.path=FILE"):
        validate_config(make_cfg("task=compliance_review"))
    base = ["task=compliance_review", "data.path=x.csv"]
    validate_config(make_cfg(*base))
    with pytest.raises(ConfigError, match=r"task.window.stride=300 is not allowed: must be in \[1, size\]"):
        validate_config(make_cfg(*base, "task.window.stride=300"))
    with pytest.raises(ConfigError, match=r"task.window.aggregate='median' is not allowed"):
        validate_config(make_cfg(*base, "task.window.aggregate=median"))
