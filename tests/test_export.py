"""finexp-export: the exported directory loads with transformers alone and reproduces the checkpoint's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from conftest import text_task
from finexp.evaluate import evaluate
from finexp.export import main as export_main
from finexp.train import train

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "optimizer.lr=1e-2"]


def _run(make_cfg, csv: Path, *overrides: str) -> tuple[str, pd.DataFrame]:
    metrics = train(make_cfg(*text_task(csv), *QUICK, *overrides))
    evaluate(make_cfg(f"ckpt_path={metrics['best_checkpoint']}", config_name="eval", fast=False))
    predictions = sorted(Path(metrics["best_checkpoint"]).parents[2].glob("run-*/predictions.csv"))[-1]
    return metrics["best_checkpoint"], pd.read_csv(predictions)


@pytest.mark.parametrize(
    "overrides",
    [
        ["adapter=lora", "adapter.target_modules=[query,value,dense]"],
        ["adapter=ia3", "task.class_weights=balanced"],
        ["adapter=full", "model=tiny_gpt"],
    ],
    ids=["lora-bert-mean", "ia3-bert-mean", "full-gpt2-last"],
)
def test_merged_export_reproduces_the_checkpoint(make_cfg, sentiment_csv, tmp_path, capsys, overrides):
    ckpt, predictions = _run(make_cfg, sentiment_csv, *overrides)
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    assert "exported" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "modeling_finexp.py"} <= {p.name for p in out.iterdir()}
    assert not any("lora" in k or "ia3" in k for k in json.loads((out / "config.json").read_text()))

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(
        predictions["text"].tolist(), padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    with torch.no_grad():
        probs = model(**encoded).logits.softmax(-1)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    expected = torch.tensor(predictions[[f"prob_{n}" for n in labels]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    assert not any("lora_" in k for k in model.state_dict())  # merged, not wrapped


def test_prompt_tuning_cannot_merge_and_is_saved_in_peft_format(make_cfg, sentiment_csv, tmp_path, capsys):
    ckpt, _ = _run(make_cfg, sentiment_csv, "adapter=prompt_tuning", "adapter.num_virtual_tokens=4")
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    assert "cannot be merged" in capsys.readouterr().out
    base = AutoModel.from_pretrained(out / "base")
    peft_model = PeftModel.from_pretrained(base, out / "adapter")
    assert peft_model.active_peft_config.num_virtual_tokens == 4
    assert (out / "head.safetensors").is_file() and json.loads((out / "head.json").read_text())["pooling"] == "mean"


def test_bottleneck_export_restores_the_plain_base(make_cfg, sentiment_csv, tmp_path):
    ckpt, _ = _run(make_cfg, sentiment_csv, "adapter=bottleneck", "adapter.variant=pfeiffer")
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    assert AutoModel.from_pretrained(out / "base").config.model_type == "bert"
    assert (out / "adapter" / "bottleneck.safetensors").is_file()
    assert json.loads((out / "adapter" / "bottleneck.json").read_text())["variant"] == "pfeiffer"


def test_export_of_a_missing_checkpoint_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "finexp-export: error: checkpoint not found" in capsys.readouterr().err
