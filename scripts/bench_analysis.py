"""What the trust report costs: seconds added to a run by ``analysis=default`` / ``analysis=full``, and integrated
gradients per explained row on the real all-MiniLM-L6-v2.

    python scripts/bench_analysis.py                   # 3 repeats, tiny BERT runs + MiniLM on credit scoring rows
    python scripts/bench_analysis.py --repeats 5 --ig-rows 10

Part 1 trains the same tiny-BERT run (generated headlines, 2 epochs) with ``analysis=none``, ``default`` and ``full``,
interleaved, and reports the median wall time of each and the difference (predict val+test, figures, report; full
adds 20 explained rows). Part 2 explains ``--ig-rows`` serialized credit-scoring applicants (~60 tokens) with MiniLM
at ``ig_steps`` 32 and reports seconds per row (median of repeats).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from finexp import build
from finexp.analysis.attributions import integrated_gradients
from finexp.config import config_dir
from finexp.train import train

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = [
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
]


def compose_cfg(work: Path, name: str, *overrides: str):  # noqa: ANN201
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*QUIET, *overrides])
    with open_dict(cfg):
        cfg.paths.log_dir = str(work)
        cfg.paths.output_dir = str(work / name)
        cfg.paths.cache_dir = str(work / "cache")
    return cfg


def headlines(path: Path, n: int = 400) -> None:
    rng = random.Random(0)
    good, bad = ["profit beats forecast", "stock upgraded"], ["loss widens", "stock downgraded"]
    rows = [
        {
            "text": f"ACME {rng.choice(good if i % 2 else bad)} {rng.choice(['today', 'again', 'in Q3'])}",
            "label": "up" if i % 2 else "down",
        }
        for i in range(n)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ig-rows", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "headlines.csv"
        headlines(data)
        task = ["task=text_classification", f"data.path={data}", "model=tiny_bert", "trainer.max_epochs=2"]
        seconds: dict[str, list[float]] = {"none": [], "default": [], "full": []}
        for repeat in range(args.repeats):
            for option in seconds:
                cfg = compose_cfg(work, f"{option}-{repeat}", *task, f"analysis={option}")
                start = time.perf_counter()
                train(cfg)
                seconds[option].append(time.perf_counter() - start)
        base = statistics.median(seconds["none"])
        print(f"tiny_bert run, 400 rows, 2 epochs: analysis=none median {base:.2f} s")
        for option in ("default", "full"):
            median = statistics.median(seconds[option])
            print(f"  analysis={option}: median {median:.2f} s (+{median - base:.2f} s, {median / base:.2f}x)")

        cfg = compose_cfg(work, "minilm", "model=minilm")
        tokenizer = build.tokenizer_from(cfg)
        datamodule = build.datamodule_from(cfg, tokenizer)
        datamodule.prepare()
        model = build.model_from(cfg, datamodule.num_labels, tokenizer)
        texts = datamodule.texts["test"][: args.ig_rows]
        tokens = statistics.mean(len(tokenizer(t)["input_ids"]) for t in texts)
        per_row = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            explanations = integrated_gradients(
                model,
                tokenizer,
                texts,
                datamodule.label_names,
                max_length=cfg.data.max_length,
                n_steps=32,
                serialized_columns=datamodule.serialized_columns,
            )
            per_row.append((time.perf_counter() - start) / len(texts))
        delta = max(e.convergence_delta for e in explanations)
        mapped = sum(bool(e.features) for e in explanations)
        print(
            f"MiniLM integrated gradients (32 steps, {tokens:.0f} tokens/row): median {statistics.median(per_row):.2f} "
            f"s/row; max convergence delta {delta:.2e}; rows mapped to all {len(datamodule.serialized_columns)} "
            f"columns: {mapped}/{len(texts)}"
        )


if __name__ == "__main__":
    main()
