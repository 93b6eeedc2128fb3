"""Which fine-tuning strategies really differ? Full fine-tuning vs LoRA vs freeze vs SetFit at K = 32 per class on real
financial tweets, 3 seeds each, then finexp-report's paired tests against full fine-tuning.

    nice -n 10 python scripts/bench_significance.py                  # 4 strategies x seeds 1, 2, 3 (12 runs)
    python scripts/bench_significance.py --seeds 1 --out outputs/sig1 # a quick look
    python scripts/bench_significance.py --report-only               # the report of what has finished

Data: the Twitter Financial News Sentiment training file (9,543 tweets; bearish / bullish / neutral), read in place
from ../shared/data (never copied). ``data.max_rows=3000`` keeps a stratified 3,000 rows, so every run is tested on
the same 600 tweets (same data fingerprint: the paired tests need it); each seed draws its own 32 training rows per
class (``data.k_shot_seed`` follows ``seed``), validation is capped at 32 per class. Model: all-MiniLM-L6-v2, at
most 10 epochs with early stopping (``experiment=few_shot_curve``'s settings: batch 8, lr 1e-4, head 1e-3), as
``scripts/bench_few_shot.py``. Two sweeps run side by side with one torch thread each: plain fine-tuning over
``adapter=full,lora,freeze`` and ``method=setfit`` (SetFit's default 40 pairs per row). A rerun skips finished runs.

The report (``<out>/report.md``, ``report.tex``, ``report.csv``): test macro-F1 per strategy as mean ± std, a 95%
t-interval over seeds, a 95% bootstrap interval over the 600 test rows, and against full fine-tuning the paired
bootstrap difference (1,000 resamples, mean over seeds) and McNemar's test on accuracy per seed, Holm-adjusted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "twitter_financial_news_sentiment" / "sent_train.csv"

COMMON = [
    "experiment=few_shot_curve",  # csv logger, no trust report, early stopping on the K-per-class val split
    "task=sentiment",
    "model=minilm",
    "data.k_shot=32",
    "data.max_rows=3000",  # stratified: 2,100 train / 300 val / 600 test rows
    "data.batch_size=8",
    "trainer.max_epochs=10",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]
SWEEPS = {  # sweep name -> its overrides (the command line overrides the experiment's sweep of the same keys)
    "finetune": ["method=finetune", "adapter=full,lora,freeze"],
    "setfit": ["method=setfit", "adapter=full"],
}


def start_sweep(out: Path, name: str, seeds: list[int], threads: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "finexp.train",
        "-m",
        *COMMON,
        f"data.path={DATA}",
        *SWEEPS[name],
        f"seed={','.join(map(str, seeds))}",
        f"hydra.sweep.dir={out / name}",
    ]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with (out / f"{name}.log").open("a") as handle:
        return subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_significance"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per sweep (two sweeps run at once)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        if not DATA.is_file():
            sys.exit(f"bench_significance: {DATA} not found (the shared TFNS file); see ../shared/data/README.md")
        seeds = [int(s) for s in args.seeds.split(",")]
        started = time.perf_counter()
        sweeps = [start_sweep(out, name, seeds, args.threads) for name in SWEEPS]
        codes = [p.wait() for p in sweeps]
        print(f"sweeps finished in {time.perf_counter() - started:.0f} s (exit codes {codes}); logs in {out}")
    from finexp.report import main as report

    report([str(out), "--by", "strategy", "--baseline", "strategy=full", "--format", "markdown,latex", "--reproduce"])


if __name__ == "__main__":
    main()
