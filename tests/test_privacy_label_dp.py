"""Label DP: randomized response flips at the rate the formula predicts, RR-with-prior stays ε-DP and flips less,
and only the training labels of a run are touched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import sentiment_frame, text_task
from finexp import build
from finexp.evaluate import load_run
from finexp.privacy.label_dp import LabelRandomizer, keep_probability, randomized_response, rr_with_prior
from finexp.train import train


@pytest.mark.parametrize(("k", "epsilon"), [(2, 0.5), (2, 3.0), (4, 1.0)])
def test_randomized_response_flip_rate_matches_formula(k, epsilon):
    n = 40_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, size=n)
    noisy = randomized_response(labels, k, epsilon, rng)
    expected = (k - 1) / (math.exp(epsilon) + k - 1)
    assert expected == pytest.approx(1 - keep_probability(epsilon, k))
    rate = float((noisy != labels).mean())
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n)  # 4 standard errors
    if k > 2:  # a flipped label is uniform over the k-1 others
        flipped = noisy[(labels == 0) & (noisy != labels)]
        shares = np.bincount(flipped, minlength=k)[1:] / len(flipped)
        np.testing.assert_allclose(shares, 1 / (k - 1), atol=0.03)
    assert (randomized_response(labels, k, math.inf, rng) == labels).all()


def test_rr_with_prior_is_epsilon_dp_and_flips_less():
    epsilon, n = 2.0, 30_000
    prior = np.array([0.7, 0.2, 0.1])
    rng = np.random.default_rng(1)
    # P(output | true label) for each true label, estimated with n draws each.
    table = np.stack(
        [np.bincount(rr_with_prior(np.full(n, y), np.tile(prior, (n, 1)), epsilon, rng), minlength=3) for y in range(3)]
    )
    table = table / n
    for out in range(3):
        p = table[:, out]
        if p.max() > 0:
            assert p.max() <= math.exp(epsilon) * p.min() * 1.1 + 1e-9, (out, p)  # ε-DP, with sampling slack
    # A confident prior, true labels drawn from it: RR-with-prior answers truthfully far more often than plain RR
    # (here it answers the top label: flips 0.2 against plain RR's 2 / (e + 2) = 0.42 at ε=1).
    confident = np.array([0.8, 0.15, 0.05])
    labels = rng.choice(3, size=n, p=confident)
    with_prior = (rr_with_prior(labels, np.tile(confident, (n, 1)), 1.0, rng) != labels).mean()
    plain = (randomized_response(labels, 3, 1.0, rng) != labels).mean()
    assert with_prior == pytest.approx(0.2, abs=0.02) and plain == pytest.approx(2 / (math.e + 2), abs=0.02)


def test_only_train_labels_are_randomized(make_cfg, sentiment_csv):
    def labels(*overrides):
        cfg = make_cfg(*text_task(sentiment_csv), *overrides)
        dm = build.datamodule_from(cfg, build.tokenizer_from(cfg), privacy=build.privacy_from(cfg))
        dm.prepare()
        return {name: ds.labels.tolist() for name, ds in dm.datasets.items()}, dm

    clean, _ = labels()
    noisy, dm = labels("privacy=label_dp", "privacy.epsilon=0.5")
    assert noisy["val"] == clean["val"] and noisy["test"] == clean["test"]
    flips = np.mean(np.array(noisy["train"]) != np.array(clean["train"]))
    expected = 1 / (math.exp(0.5) + 1)  # 0.378
    n = len(clean["train"])
    assert abs(flips - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert dm.train_label_transform.report()["privacy/label_flip_rate"] == pytest.approx(flips)


def test_label_dp_with_prior_and_pii_masking_end_to_end(make_cfg, tmp_path):
    frame = sentiment_frame(160)
    frame["headline"] = [f"{h} says jo{i}@acme.com" if i % 4 == 0 else h for i, h in enumerate(frame["headline"])]
    path = tmp_path / "pii.csv"
    frame.to_csv(path, index=False)
    cfg = make_cfg(
        *text_task(path),
        "privacy=label_dp",
        "privacy.epsilon=2",
        "privacy.prior=first_stage",
        "privacy.mask_pii=true",
        "trainer.max_epochs=2",
        "analysis=none",  # the trust report is tested elsewhere
        "optimizer.lr=3e-3",
    )
    metrics = train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["privacy/epsilon"] == 2.0 and saved["privacy/label_prior"] == "first_stage"
    assert 0 <= saved["privacy/label_flip_rate"] < saved["privacy/label_flip_rate_rr"] + 0.1
    assert saved["pii/email"] == 40  # every 4th of 160 rows, in all three splits
    info = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())
    assert info["privacy"]["pii/email"] == 40 and info["privacy"]["privacy/label_flip_rate"] == pytest.approx(
        saved["privacy/label_flip_rate"]
    )
    assert metrics["test/auroc"] > 0.8  # learns through the flipped labels (chance 0.5; 0.92-1.0 over seeds)
    loaded = load_run(saved["best_checkpoint"], data_path=str(path))  # finexp-eval masks new data the same way
    assert sum("[EMAIL]" in text for text in loaded.datamodule.texts["test"]) == 40
    assert not any("@acme.com" in text for text in loaded.datamodule.texts["test"])


def test_bad_label_dp_settings_are_rejected(make_cfg):
    from finexp.config import ConfigError, validate_config

    for override, key in [("privacy.epsilon=0", "privacy.epsilon"), ("privacy.prior=oracle", "privacy.prior")]:
        with pytest.raises(ConfigError, match=key):
            validate_config(make_cfg("privacy=label_dp", override))
    with pytest.raises(Exception, match="first_stage_fraction"):
        LabelRandomizer(1.0, first_stage_fraction=1.5)
