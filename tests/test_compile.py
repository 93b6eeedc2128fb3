"""trainer.compile=true (torch.compile of the encoder) and the GPU trainer's bf16 default."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import text_task
from finexp.config import ConfigError, validate_config
from finexp.train import train

# inductor compiles C++ on CPU: without a compiler torch.compile cannot run here
CXX = next((c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)), None)
ONE_STEP = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"]
# compiled dropout draws its masks from another generator: without dropout the two steps compute the same thing
NO_DROPOUT = [
    "model.dropout=0.0",
    "+model.architecture.hidden_dropout_prob=0.0",
    "+model.architecture.attention_probs_dropout_prob=0.0",
]


@pytest.mark.skipif(CXX is None, reason="torch.compile (inductor) needs a C++ compiler on CPU; none found (g++, c++)")
def test_compile_true_trains_tiny_bert_one_step_with_the_eager_loss(make_cfg, sentiment_csv):
    eager = train(make_cfg(*text_task(sentiment_csv), *ONE_STEP, *NO_DROPOUT, "data.batch_size=8"))
    cfg = make_cfg(*text_task(sentiment_csv), *ONE_STEP, *NO_DROPOUT, "data.batch_size=8", "trainer.compile=true")
    compiled = train(cfg)
    torch.testing.assert_close(compiled["train/loss"], eager["train/loss"], rtol=1e-4, atol=1e-5)  # same first step
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "run_info.json").read_text())["compiled"] == "encoder"
    state = torch.load(compiled["best_checkpoint"], weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in key for key in state)  # compiled in place: the usual parameter names


def test_compile_with_a_model_it_cannot_compile_is_refused_before_anything_loads(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "model=tfidf_logreg", "trainer.compile=true")
    with pytest.raises(
        ConfigError, match=r"trainer.compile=true compiles a transformer encoder.*trainer.compile=false"
    ):
        train(cfg)
    cfg = make_cfg(*text_task(sentiment_csv), "privacy=dp_sgd", "trainer.compile=true")
    with pytest.raises(ConfigError, match=r"trainer.compile=true with privacy=dp_sgd"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("*.json"))  # refused before the run wrote anything


def test_gpu_trainer_defaults_to_bf16_mixed_and_it_validates(make_cfg):
    cfg = make_cfg("trainer=gpu", fast=False)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.compile is False
    validate_config(cfg)  # model.dtype=auto: fp32 weights, bf16 compute
    with pytest.raises(ConfigError, match=r"model.dtype=bfloat16 with trainer.precision=bf16-mixed"):
        validate_config(make_cfg("trainer=gpu", "model.dtype=bfloat16", fast=False))
