"""Each built-in table task: finexp (all-MiniLM-L6-v2, default settings) against gradient boosting on the same split.

    python scripts/bench_tasks.py                                   # all built-in table tasks (slow on a CPU)
    python scripts/bench_tasks.py --tasks card_approval mortgage_denial --overrides trainer.max_epochs=1

Gradient boosting (scikit-learn's HistGradientBoostingClassifier, or HistGradientBoostingRegressor for a regression
task; native categorical support, default settings) reads the raw columns of the same train split that finexp
serializes, minus the same excluded/sensitive columns, and is scored on the same test split with the same metric
(the task's monitor, e.g. test/auroc; test/rmse for interest_rate, where lower is better).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from finexp import build
from finexp.config import config_dir
from finexp.train import train

TASKS = [
    "credit_scoring",
    "loan_default",
    "card_approval",
    "mortgage_denial",
    "loan_grade",
    "market_direction",
    "interest_rate",
]


def gbm_score(datamodule: object, monitor: str) -> float:
    splits, columns = datamodule.splits, datamodule.serialized_columns
    label_index = {name: i for i, name in enumerate(datamodule.label_names)}

    def features(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[columns].copy()
        for column in out.columns:
            if not pd.api.types.is_numeric_dtype(out[column]):
                # Free text (e.g. a job title) has thousands of values: keep the 250 most frequent, others -> NaN.
                frequent = set(out[column].value_counts().index[:250])
                out[column] = out[column].where(out[column].isin(frequent)).astype("category")
        return out

    train_x = features(pd.concat([splits.train, splits.val]))
    categories = {c: train_x[c].cat.categories for c in train_x.columns if train_x[c].dtype == "category"}
    test_x = features(splits.test)
    for column, cats in categories.items():
        test_x[column] = pd.Categorical(test_x[column], categories=cats)
    label = datamodule.columns.label
    metric = monitor.split("/", 1)[1]
    if metric in ("rmse", "mae"):  # regression: the target as read
        model = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
        model.fit(train_x, pd.concat([splits.train, splits.val])[label].astype(float))
        error = splits.test[label].astype(float).to_numpy() - model.predict(test_x)
        return float(np.sqrt(np.mean(error**2))) if metric == "rmse" else float(np.abs(error).mean())
    train_y = pd.concat([splits.train, splits.val])[label].map(label_index)
    test_y = splits.test[label].map(label_index).to_numpy()
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(train_x, train_y)
    probs = model.predict_proba(test_x)
    if metric == "auroc":
        return roc_auc_score(test_y, probs[:, 1])
    if metric == "auprc":
        return average_precision_score(test_y, probs[:, 1])
    return f1_score(test_y, np.argmax(probs, 1), average="macro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for the finexp runs")
    parser.add_argument("--skip-finexp", action="store_true", help="only the gradient-boosting column")
    args = parser.parse_args()

    rows = []
    for task in args.tasks:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[f"task={task}", "logger=csv", *args.overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = f"outputs/bench/tasks/{task}"
        datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
        datamodule.prepare()
        monitor = build.resolve_monitor(cfg, datamodule.num_labels).replace("val/", "test/")
        gbm = gbm_score(datamodule, monitor)
        finexp_value, minutes = float("nan"), 0.0
        if not args.skip_finexp:
            started = time.perf_counter()
            finexp_value = train(cfg)[monitor]
            minutes = (time.perf_counter() - started) / 60
        rows.append((task, monitor, finexp_value, gbm, minutes))
        print(f"{task}: finexp {finexp_value:.4f}  gbm {gbm:.4f}  ({minutes:.1f} min)", flush=True)

    print("\n| task | metric | finexp (minilm) | gradient boosting | gap | finexp minutes |")
    print("|---|---|---|---|---|---|")
    for task, metric, ours, gbm, minutes in rows:
        print(f"| {task} | {metric} | {ours:.4f} | {gbm:.4f} | {ours - gbm:+.4f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
