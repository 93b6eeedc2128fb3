"""``task.hybrid.gbm_score``: gradient boosting's cross-fitted score as a numeric input of the fusion head."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finexp.baselines import GradientBoosting
from finexp.baselines.stacking import GbmScore, log_odds, out_of_fold_scores
from finexp.config import ConfigError, validate_config
from finexp.data.splits import Splits
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


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["task.hybrid.gbm_score=true"], "model.fusion"),
        (["task.hybrid.gbm_score=true", "model.fusion=concat", "task.hybrid.folds=1"], "task.hybrid.folds"),
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
