"""method=prompt (PET): the pattern splice, label words, a few-shot run on a tiny masked LM, and its config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import text_task
from finexp import FinexpError
from finexp.build import tokenizer_from
from finexp.config import ConfigError, validate_config
from finexp.evaluate import evaluate
from finexp.inference import load_predictor
from finexp.models.prompt import PromptTemplate, verbalizer_ids
from finexp.train import train

VERBALIZER = "method.verbalizer={bearish:bad,bullish:good}"


@pytest.fixture
def tokenizer(make_cfg):
    return tokenizer_from(make_cfg())


def test_pattern_is_spliced_inside_the_special_tokens_and_the_mask_is_found(tokenizer):
    template = PromptTemplate(tokenizer, "{text} It was {mask}.")
    rows = tokenizer(["profit beats forecast", "shares fall"], padding=True, return_tensors="pt")
    ids, mask, positions = template.apply(rows["input_ids"], rows["attention_mask"])

    first = tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist())
    assert first == ["[CLS]", "profit", "beats", "forecast", "it", "was", "[MASK]", ".", "[SEP]"]
    second = tokenizer.convert_ids_to_tokens(ids[1][mask[1].bool()].tolist())
    assert second[:3] == ["[CLS]", "shares", "fall"] and second[-1] == "[SEP]"
    assert (ids[1][~mask[1].bool()] == tokenizer.pad_token_id).all()  # right padding kept
    assert ids[torch.arange(2), positions].tolist() == [tokenizer.mask_token_id] * 2

    # a pattern with the mask before the text; truncation cuts the text, never the pattern
    before = PromptTemplate(tokenizer, "Mood: {mask}. {text}")
    ids, mask, positions = before.apply(rows["input_ids"], rows["attention_mask"], max_positions=9)
    assert mask.sum(1).max() <= 9 and ids[torch.arange(2), positions].tolist() == [tokenizer.mask_token_id] * 2
    kept = tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist())
    assert kept == ["[CLS]", "mood", ":", "[MASK]", ".", "profit", "beats", "forecast", "[SEP]"]


def test_label_words_must_be_single_tokens_and_patterns_need_text_and_mask(tokenizer):
    assert verbalizer_ids(tokenizer, {"0": "bad", "1": ["good", "great"]}) == {"0": [2919], "1": [2204, 2307]}
    with pytest.raises(FinexpError, match=r"method\.verbalizer\.bull='bullish' is 2 tokens"):
        verbalizer_ids(tokenizer, {"bull": "bullish"})
    with pytest.raises(FinexpError, match="exactly one"):
        PromptTemplate(tokenizer, "{text} It was good.")


def test_prompt_method_learns_from_8_rows_per_class_and_evaluates_from_its_checkpoint(
    make_cfg, sentiment_csv, tmp_path
):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "method=prompt",
        VERBALIZER,
        "data.k_shot=8",
        "optimizer.lr=3e-3",  # a random-init 2-layer masked LM needs a far larger step than a pretrained one
        "trainer.max_epochs=6",
        "trainer.deterministic=true",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert metrics["test/auroc"] > 0.8 and metrics["test/accuracy"] > 0.7  # chance: 0.5
    info = json.loads((run / "run_info.json").read_text())
    assert info["rows"]["train"] == 16
    ckpt = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert any(k.startswith("model.head.predictions.") for k in ckpt)  # the masked LM's head scored the words

    saved = json.loads((run / "metrics.json").read_text())
    eval_cfg = make_cfg(
        f"ckpt_path={saved['best_checkpoint']}", "trainer.accelerator=cpu", config_name="eval", fast=False
    )
    eval_cfg.paths.output_dir = str(tmp_path / "eval")
    assert evaluate(eval_cfg)["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
    # finexp-predict / -serve's Predictor rebuilds the same model: the same labels as finexp-eval's predictions
    expected = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    predictor = load_predictor(saved["best_checkpoint"], device="cpu")
    rows = [{"headline": text} for text in expected["text"]]
    assert [p.label for p in predictor.predict(rows)] == expected["predicted"].astype(str).tolist()


def test_label_words_follow_the_datamodules_label_order(make_cfg, sentiment_csv):
    from finexp.build import model_from

    cfg = make_cfg(*text_task(sentiment_csv), "method=prompt", "method.verbalizer={bullish:good,bearish:bad}")
    tokenizer = tokenizer_from(cfg)
    model = model_from(cfg, 2, tokenizer, ["bearish", "bullish"])
    bad, good = verbalizer_ids(tokenizer, {"x": "bad", "y": "good"}).values()
    assert model.word_ids[:, 0].tolist() == [*bad, *good]
    with pytest.raises(FinexpError, match=r"no words for \['neutral'\]"):
        model.bind_labels(["bearish", "neutral"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"method\.verbalizer=None is not allowed: e\.g\. method\.verbalizer="),
        ([VERBALIZER, "method.template='{text} is fine'"], r"method\.template"),
        ([VERBALIZER, "privacy=dp_sgd"], "not with privacy=dp_sgd"),
        ([VERBALIZER, "model.init_from=/tmp/none.ckpt"], "not with model.init_from"),
        ([VERBALIZER, "task.problem=regression"], "does not support method=prompt"),
    ],
)
def test_prompt_settings_are_checked(make_cfg, sentiment_csv, overrides, message):
    cfg = make_cfg(*text_task(sentiment_csv), "method=prompt", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)
