"""method=setfit: sentence pairs, the logistic-regression head, and a few-shot run that learns on a tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import text_task
from finexp.config import ConfigError, validate_config
from finexp.evaluate import evaluate
from finexp.methods.setfit import fit_logistic_head, sentence_pairs
from finexp.train import train


def test_pairs_alternate_same_and_different_class_and_are_seeded():
    labels = [0] * 5 + [1] * 3 + [2] * 4
    pairs = sentence_pairs(labels, 120, seed=0)
    assert len(pairs) == 120 and sum(t for _, _, t in pairs) == 60  # half positive
    for a, b, target in pairs:
        assert (labels[a] == labels[b]) == (target == 1.0)
        assert target == 0.0 or a != b  # a positive partner is another row of the class
    anchors = np.bincount([a for a, _, _ in pairs], minlength=len(labels))
    assert anchors.min() == anchors.max() == 10  # every row anchors its share
    assert pairs == sentence_pairs(labels, 120, seed=0) and pairs != sentence_pairs(labels, 120, seed=1)
    with pytest.raises(Exception, match="at least two classes"):
        sentence_pairs([1, 1, 1], 10, seed=0)


def test_logistic_head_reproduces_the_regressions_probabilities():
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator)
    for num_labels in (2, 3):
        labels = torch.arange(40) % num_labels
        head = nn.Linear(6, num_labels)
        fit_logistic_head(head, features, labels, seed=0)
        expected = LogisticRegression(max_iter=2000, random_state=0).fit(features.numpy(), labels.numpy())
        got = head(features).softmax(-1).detach().numpy()
        np.testing.assert_allclose(got, expected.predict_proba(features.numpy()), atol=1e-5)


def test_setfit_learns_from_8_rows_per_class_and_writes_a_normal_run(make_cfg, sentiment_csv, tmp_path):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "method=setfit",
        "data.k_shot=8",
        "method.num_pairs=192",
        "method.pair_lr=3e-3",  # a random-init 2-layer encoder needs a far larger step than a pretrained one
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert metrics["test/auroc"] > 0.9 and metrics["test/accuracy"] > 0.75  # chance: 0.5
    assert metrics["setfit/pairs"] == 192 and metrics["setfit/pair_loss_last"] < metrics["setfit/pair_loss_first"]
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test/f1_macro", "test/auroc", "val/auroc", "params/trainable", "time/fit_s", "time/setfit_pairs_s"):
        assert key in saved, key
    assert saved["params/trainable"] == 32 * 2 + 2  # stage 2 trains the head only
    info = json.loads((run / "run_info.json").read_text())
    assert info["rows"]["train"] == 16 and info["sampling"]["train_per_class"] == {"bearish": 8, "bullish": 8}

    # the checkpoint holds the tuned encoder: finexp-eval rebuilds the model and gets the same test metrics
    ckpt = torch.load(saved["best_checkpoint"], weights_only=True)
    assert "finexp_frozen" not in ckpt and any(k.startswith("model.encoder.") for k in ckpt["state_dict"])
    eval_cfg = make_cfg(
        f"ckpt_path={saved['best_checkpoint']}", "trainer.accelerator=cpu", config_name="eval", fast=False
    )
    eval_cfg.paths.output_dir = str(tmp_path / "eval")
    assert evaluate(eval_cfg)["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)


def test_setfit_settings_are_checked(make_cfg, sentiment_csv):
    base = [*text_task(sentiment_csv), "method=setfit"]
    with pytest.raises(ConfigError, match=r"method\.head_init='svm'"):
        validate_config(make_cfg(*base, "method.head_init=svm"))
    with pytest.raises(ConfigError, match=r"method\.pair_lr"):
        validate_config(make_cfg(*base, "method.pair_lr=0"))
    with pytest.raises(ConfigError, match="not dp_sgd"):
        validate_config(make_cfg(*base, "privacy=dp_sgd"))
