"""``task.hybrid.gbm_score``: gradient boosting's cross-fitted score as a numeric input of the fusion head."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from finexp import build
from finexp.baselines import ColumnLogReg, GradientBoosting
from finexp.baselines.stacking import GbmScore, log_odds, out_of_fold_scores
from finexp.config import ConfigError, validate_config
from finexp.data.splits import Splits
from finexp.models.classifier import SequenceClassifier
from finexp.train import train


class Recognizer:
    """A "model" that scores 1.0 for a row it was fitted on and 0.0 for any other: an in-sample score shows."""

    def __init__(self, x: pd.DataFrame) -> None:
        self.seen = set(x["row"])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = x["row"].isin(self.seen).to_numpy(dtype=float)
        return np.stack([1 - p, p], axis=1)


def test_out_of_fold_scores_come_from_models_that_never_saw_the_row():
    x = pd.DataFrame({"row": range(50)})
    y = np.array([0, 1] * 25)
    scores, fold = out_of_fold_scores(lambda xs, ys: Recognizer(xs), x, y, folds=5, seed=0)
    assert scores.tolist() == [0.0] * 50  # no row was scored by a model fitted on it
    assert sorted(np.bincount(fold).tolist()) == [10] * 5  # and each fold held out a fifth (stratified)


def numeric_table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """The label is whether one number exceeds another: boosting finds it, a tiny encoder reading digits does not."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = round(rng.uniform(0, 100), 1), round(rng.uniform(0, 100), 1)
        rows.append({"a": a, "b": b, "region": rng.choice(["north", "south"]), "default": "yes" if a > b else "no"})
    return pd.DataFrame(rows)


def test_val_and_test_are_scored_by_the_model_fitted_on_all_of_train():
    frame = numeric_table(120)
    splits = Splits(frame.iloc[:80], frame.iloc[80:100], frame.iloc[100:])
    stacked = GbmScore(folds=4, seed=1, gbm={"max_iter": 30})(splits, ["a", "b", "region"], "default", ["no", "yes"])
    full = GradientBoosting(max_iter=30, seed=1).fit(splits.train[["a", "b", "region"]], frame.default[:80] == "yes")
    expected = log_odds(full.predict_proba(splits.test[["a", "b", "region"]])[:, 1])
    np.testing.assert_allclose(stacked.test["gbm_score"].to_numpy(), expected)
    in_sample = log_odds(full.predict_proba(splits.train[["a", "b", "region"]])[:, 1])
    assert not np.allclose(stacked.train["gbm_score"].to_numpy(), in_sample)  # train rows: out of fold instead


def xor_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Default when exactly one of two numbers is high: an interaction trees find and no line separates."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 100, n).round(1), rng.uniform(0, 100, n).round(1)
    return pd.DataFrame({"a": a, "b": b, "default": np.where((a > 50) != (b > 50), "yes", "no")})


def linear_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """The label's log-odds are a sum of eight small effects: logistic regression's shape, hard for 240-row trees."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = rng.random(n) < 1 / (1 + np.exp(-x.sum(axis=1)))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).round(3)
    return frame.assign(default=np.where(y, "yes", "no"))


@pytest.mark.parametrize(("table", "expected"), [(xor_table, "gbm"), (linear_table, "logreg")])
def test_stack_best_picks_the_model_whose_out_of_fold_scores_rank_train_better(table, expected):
    frame = table(n=240, seed=2)
    features = [c for c in frame.columns if c != "default"]
    splits = Splits(frame.iloc[:160], frame.iloc[160:200], frame.iloc[200:])
    stack = GbmScore(folds=4, seed=1, stack="best")
    stacked = stack(splits, features, "default", ["no", "yes"])
    record = stack.record
    assert record["stack"] == expected  # an interaction for trees; a sum of effects for a line
    assert record[f"out_of_fold_auroc/{expected}"] > max(v for k, v in record.items() if k.startswith("out_of")) - 1e-12
    y = (frame.default[:160] == "yes").to_numpy()
    fit = {"gbm": lambda: GradientBoosting(seed=1), "logreg": ColumnLogReg}[expected]
    full = fit().fit(splits.train[features], y)
    expected_test = log_odds(full.predict_proba(splits.test[features].reset_index(drop=True))[:, 1])
    np.testing.assert_allclose(stacked.test["gbm_score"].to_numpy(), expected_test)  # the chosen model scores test


def test_stack_mean_averages_both_models_log_odds_out_of_fold_on_train_and_fitted_on_all_of_train_elsewhere():
    frame = pd.concat([xor_table(n=120, seed=3), linear_table(n=120, seed=3)], ignore_index=True).sample(
        frac=1.0, random_state=0
    )
    features = [c for c in frame.columns if c != "default"]
    frame[features] = frame[features].fillna(0.0)
    splits = Splits(frame.iloc[:160], frame.iloc[160:200], frame.iloc[200:])
    stack = GbmScore(folds=4, seed=1, stack="mean")
    stacked = stack(splits, features, "default", ["no", "yes"])
    x, y = splits.train[features].reset_index(drop=True), (splits.train.default == "yes").to_numpy()
    fits = {"gbm": lambda a, b: GradientBoosting(seed=1).fit(a, b), "logreg": lambda a, b: ColumnLogReg().fit(a, b)}
    oof = [log_odds(out_of_fold_scores(fit, x, y, 4, 1)[0]) for fit in fits.values()]
    np.testing.assert_allclose(stacked.train["gbm_score"].to_numpy(), (oof[0] + oof[1]) / 2)
    test_rows = splits.test[features].reset_index(drop=True)
    full = [log_odds(fit(x, y).predict_proba(test_rows)[:, 1]) for fit in fits.values()]
    np.testing.assert_allclose(stacked.test["gbm_score"].to_numpy(), (full[0] + full[1]) / 2)
    record = stack.record
    assert record["stack"] == "mean" and "gbm" in record  # boosting's arguments are recorded: it is a member
    assert {"out_of_fold_auroc/gbm", "out_of_fold_auroc/logreg", "out_of_fold_auroc/mean"} <= set(record)
    assert "the mean of gradient boosting and logistic regression" in record["stacked"]


def _run(make_cfg, path: Path, *extra: str) -> dict:
    return train(
        make_cfg(
            "task=table_classification",
            f"data.path={path}",
            "task.label_column=default",
            "task.positive_label=yes",
            "trainer.max_epochs=2",
            "optimizer.lr=1e-2",
            "optimizer.head_lr=0.1",  # the head must learn the score's weight within two short epochs
            "data.batch_size=16",
            "test_predictions=false",
            *extra,
        )
    )


def test_the_hybrid_beats_text_alone_when_the_signal_is_numeric(make_cfg, tmp_path):
    path = tmp_path / "pairs.csv"
    numeric_table().to_csv(path, index=False)
    text = _run(make_cfg, path)
    hybrid = _run(make_cfg, path, "model.fusion=concat", "task.hybrid.gbm_score=true", "task.hybrid.folds=3")
    assert hybrid["test/auroc"] > 0.85  # chance: 0.5
    assert hybrid["test/auroc"] > text["test/auroc"] + 0.15
    info = json.loads((Path(hybrid["best_checkpoint"]).parents[1] / "run_info.json").read_text())
    record = info["hybrid"]
    assert record["folds"] == 3 and record["features"] == ["a", "b", "region"]  # the score is not a feature
    assert "gbm_score" not in info["serialized_columns"]  # nor part of the text


HYBRID = ["model.fusion=concat", "task.hybrid.gbm_score=true", "task.hybrid.folds=3"]


def test_the_untrained_hybrid_is_boosting(make_cfg, tmp_path):
    """Before any training step the hybrid's log-odds are boosting's, row for row: the out-of-fold score on train,
    the full model's on val and test (so its AUROC is boosting's). A randomly initialised head instead gave the score
    a random sign and ranked below chance after a short run."""
    path = tmp_path / "pairs.csv"
    numeric_table().to_csv(path, index=False)
    cfg = make_cfg(
        "task=table_classification",
        f"data.path={path}",
        "task.label_column=default",
        "task.positive_label=yes",
        *HYBRID,
    )
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    model = build.model_from(cfg, datamodule.num_labels, tokenizer, datamodule.label_names)
    build.fit_fusion_statistics(model, datamodule)  # the fusion input's train statistics, as a run sets them
    model.eval()
    column = datamodule.numeric_columns.index("gbm_score")
    for split in ("train", "val", "test"):
        dataset = datamodule.datasets[split]
        with torch.no_grad():
            logits = torch.cat(
                [
                    model(b["input_ids"], b["attention_mask"], b["features"])
                    for b in DataLoader(dataset, batch_size=64, collate_fn=datamodule.collate(split))
                ]
            )
        score = dataset.features[:, column]
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], score)
        if split != "test":  # what run_info.json records: boosting's own AUROC (out of fold on train)
            auroc = roc_auc_score(dataset.labels.numpy(), (logits[:, 1] - logits[:, 0]).numpy())
            assert auroc == pytest.approx(datamodule.run_records["hybrid"][f"stack_auroc/{split}"], abs=1e-6)


def test_one_epoch_of_the_hybrid_keeps_boosting_ranking(make_cfg, tmp_path):
    """One epoch at conf/contender/table_hybrid's learning rates: the hybrid ranks the test rows about as well as
    boosting alone on the same split (the head learns a residual around boosting's score)."""
    path = tmp_path / "pairs.csv"
    numeric_table(seed=3).to_csv(path, index=False)
    common = ["task=table_classification", f"data.path={path}", "task.label_column=default", "task.positive_label=yes"]
    common += ["trainer.max_epochs=1", "data.batch_size=16", "test_predictions=false", "seed=7"]
    gbm = train(make_cfg(*common, "model=gbm"))  # the same boosting (settings, seed) as the hybrid stacks
    hybrid = train(make_cfg(*common, *HYBRID, "optimizer.lr=5e-5", "optimizer.head_lr=1e-3"))
    assert gbm["test/auroc"] > 0.8  # boosting finds a > b
    assert hybrid["test/auroc"] >= gbm["test/auroc"] - 0.02


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["task.hybrid.gbm_score=true"], "model.fusion"),
        (["task.hybrid.gbm_score=true", "model.fusion=concat", "task.hybrid.folds=1"], "task.hybrid.folds"),
        (["task.hybrid.gbm_score=true", "model.fusion=concat", "task.hybrid.stack=svm"], "task.hybrid.stack"),
        (
            ["task.hybrid.gbm_score=true", "model.fusion=concat", "+task.hybrid.gbm.max_iters=5"],
            "task.hybrid.gbm.max_iters",
        ),
    ],
)
def test_hybrid_settings_that_cannot_run_name_the_key(make_cfg, applicants_csv, overrides, key):
    cfg = make_cfg("task=table_classification", f"data.path={applicants_csv}", "task.label_column=default", *overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_a_hybrid_head_restarts_at_zero_and_needs_two_labels():
    """``model.init_from`` with other labels re-initialises the head: a hybrid's at zero again, as when built."""
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    model = SequenceClassifier(encoder, 2, numeric_features=3, score_feature=2)
    torch.nn.init.normal_(model.head.weight)  # as if trained
    model.reset_head()
    assert not model.head.weight.any() and not model.head.bias.any()
    with pytest.raises(ValueError, match="two labels"):
        SequenceClassifier(encoder, 3, numeric_features=3, score_feature=2)
