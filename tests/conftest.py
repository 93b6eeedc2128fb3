"""Shared fixtures: composing configs like the CLI does, and small generated datasets (no network, no downloads)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from finexp.config import config_dir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytest-xdist (pyproject's addopts: one worker per core, at most 4) runs the tests in parallel: each worker, and every
# process a test starts (CLI runs, DDP ranks, Flower nodes), gets its share of the cores as threads, so two workers
# on two cores do not each run two PyTorch threads (oversubscribed, that is 3-6x slower, not 2x faster).
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // int(workers)))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, threads)

FAST = [  # what every in-process test run shares: tiny model, CSV logger, quick epochs
    "model=tiny_bert",
    "logger=csv",
    "trainer.accelerator=cpu",
    "recipe.max_epochs=3",  # recipe=auto would give tiny data up to 10 (tests/test_recipe.py lifts the cap)
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
    "analysis=none",  # the trust report is tested in test_analysis.py/test_explain.py; elsewhere it only costs time
]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.gpu`` tests skip, saying why, where torch sees no CUDA device (the rest of the suite runs)."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"needs a CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() false)")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/<config_name>.yaml`` with overrides, writing into ``tmp_path`` instead of ./outputs."""
    GlobalHydra.instance().clear()

    calls = []

    def _make(*overrides: str, config_name: str = "train", fast: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[*(FAST if fast else []), *overrides])
        calls.append(1)
        with open_dict(cfg):  # each composed config gets its own run directory: run, run-2, run-3, ...
            cfg.paths.log_dir = str(tmp_path / "outputs")
            cfg.paths.output_dir = str(tmp_path / ("run" if len(calls) == 1 else f"run-{len(calls)}"))
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    yield _make
    GlobalHydra.instance().clear()


BULLISH = [
    "shares rally after strong earnings",
    "profit beats forecast",
    "stock upgraded to buy",
    "revenue growth accelerates",
    "dividend raised again",
]
BEARISH = [
    "shares slump on weak guidance",
    "loss widens as sales fall",
    "stock downgraded to sell",
    "revenue misses estimates",
    "dividend cut amid losses",
]


NEUTRAL = [
    "shares flat ahead of results",
    "annual meeting scheduled for may",
    "board names new auditor",
    "trading volume in line with average",
    "company reaffirms guidance",
]
PHRASES = {"bullish": BULLISH, "bearish": BEARISH, "neutral": NEUTRAL}


def sentiment_frame(n: int = 160, seed: int = 0, neutral: bool = False) -> pd.DataFrame:
    """An easy text task: the wording decides the label. Two classes; with ``neutral``, every third row is a third
    class with its own wording."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "neutral" if neutral and i % 3 == 0 else ("bullish" if i % 2 else "bearish")
        phrase = rng.choice(PHRASES[label])
        rows.append({"id": i, "headline": f"{rng.choice(['ACME', 'Globex', 'Initech'])} {phrase}", "sentiment": label})
    return pd.DataFrame(rows)


def applicants_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A small loan table where a high debt ratio or past arrears mean default (with missing values)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        income = rng.randint(20, 200)
        debt = rng.randint(0, 150)
        arrears = rng.random() < 0.2
        default = "yes" if (debt / income > 0.8 or arrears) else "no"
        rows.append(
            {
                "customer_id": f"C{i:04d}",
                "income": income if rng.random() > 0.05 else None,
                "debt": debt,
                "arrears": "yes" if arrears else "no",
                "purpose": rng.choice(["car", "home", "education"]),
                "default": default,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    path = tmp_path / "headlines.csv"
    sentiment_frame().to_csv(path, index=False)
    return path


@pytest.fixture
def applicants_csv(tmp_path: Path) -> Path:
    path = tmp_path / "applicants.csv"
    applicants_frame().to_csv(path, index=False)
    return path


# An easy instruction-tuning task (task=answer_generation): each prompt has one answer.
QA = [
    ("how do i reset my pin", "use the app settings to reset your pin"),
    ("my card was stolen", "freeze the card in the app and call us"),
    ("what is the transfer limit", "the daily limit is five thousand"),
    ("can i get a new card", "order a new card in the app"),
]


def write_qa_jsonl(path: Path, n: int = 40, seed: int = 0) -> Path:
    """``n`` prompt/response rows drawn (seeded) from :data:`QA`, as JSONL at ``path``."""
    rng = random.Random(seed)
    rows = [dict(zip(("prompt", "response"), rng.choice(QA), strict=True)) for _ in range(n)]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture
def qa_jsonl(tmp_path: Path) -> Path:
    return write_qa_jsonl(tmp_path / "qa.jsonl")


def text_task(path: Path) -> list[str]:
    return [
        "task=text_classification",
        f"data.path={path}",
        "task.text_column=headline",
        "task.label_column=sentiment",
    ]


def save_tiny_llama(directory: Path, vocab_size: int) -> Path:
    """A 2-layer Llama saved in bf16 with save_pretrained into ``directory``, as a hub checkpoint would be (random
    weights, seeded): what the 4-bit, dtype and memory tests load as pretrained weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=64,  # bitsandbytes' CPU kernels pack 4-bit weights in blocks of 64 inputs
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(directory)
    return directory
