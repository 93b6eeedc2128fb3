"""model=tiny_llama: its shipped byte-level BPE tokenizer (round trips, padding, chat template, rebuildable) and the
2-layer Llama training for classification (pooled head) and answer generation."""

from __future__ import annotations

import filecmp
import importlib.util
import random
from pathlib import Path

import pandas as pd
import pytest

from conftest import sentiment_frame, text_task
from finexp.build import model_from, tokenizer_from
from finexp.config.resolvers import package_path
from finexp.train import train

ASSETS = Path(package_path("finexp", "assets/tiny_llama_tokenizer"))
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_tiny_tokenizer.py"


@pytest.fixture
def tokenizer(make_cfg):
    return tokenizer_from(make_cfg("model=tiny_llama"))


@pytest.mark.parametrize(
    "text",
    [
        "€1.2bn loss; EBITDA −3%",
        "ACME shares rally after strong earnings",
        "Zürich café: ¥90bn, £4.1bn — naïve 日本 📉",
        "  two spaces,\ttabs\nand newlines  ",
    ],
)
def test_tokenizer_round_trips_unicode_and_financial_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_is_a_trained_bpe_with_padding_and_special_tokens(tokenizer):
    assert 1000 <= len(tokenizer) <= 2000
    specials = [tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    assert specials == ["<unk>", "<s>", "</s>", "<pad>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [0, 1, 2, 3]  # Llama's order; the model config names 1, 2, 3
    # merges learnt from the corpus: common financial words are one token each, not their bytes
    for word in (" earnings", " EBITDA", " bullish", " bearish", " neutral"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    batch = tokenizer(["profit beats forecast", "loss"], padding=True)
    assert tokenizer.padding_side == "right"
    assert batch["input_ids"][1][-2:] == [tokenizer.pad_token_id] * 2 and batch["attention_mask"][1][-2:] == [0, 0]


def test_chat_template_renders_system_user_and_the_generation_prompt(tokenizer):
    messages = [
        {"role": "system", "content": "You are a financial analyst."},
        {"role": "user", "content": "Sentiment of: profit beats forecast"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|system|>\nYou are a financial analyst.</s>\n"
        "<|user|>\nSentiment of: profit beats forecast</s>\n"
        "<|assistant|>\n"
    )
    closed = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "positive"}], tokenize=False)
    assert closed.endswith("<|assistant|>\npositive</s>\n") and not closed.endswith("<|assistant|>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    markers = tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>"])
    assert ids[:2] == [tokenizer.bos_token_id, markers[0]] and all(m in ids for m in markers)  # one token each


def test_the_shipped_tokenizer_is_what_the_script_builds(tmp_path):
    spec = importlib.util.spec_from_file_location("build_tiny_tokenizer", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.build(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, ASSETS, names, shallow=False)
    assert (match, mismatch, errors) == (names, [], [])


def test_model_is_a_two_layer_llama_with_grouped_query_attention(make_cfg, tokenizer):
    cfg = make_cfg("model=tiny_llama", "task=text_classification", "data.path=x.csv")
    model = model_from(cfg, 3, tokenizer)
    config = model.encoder.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 2, 64)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, len(tokenizer))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )


def test_tiny_llama_classifies_three_classes_with_last_token_pooling(make_cfg, tmp_path):
    path = tmp_path / "headlines3.csv"
    sentiment_frame(n=180, neutral=True).to_csv(path, index=False)
    cfg = make_cfg(*text_task(path), "model=tiny_llama", "trainer.max_epochs=4", "optimizer.lr=3e-3")
    metrics = train(cfg)
    assert cfg.model.pooling == "last"
    assert metrics["test/accuracy"] >= 0.9 and metrics["test/f1_macro"] >= 0.9  # chance: 0.33


def test_tiny_llama_generates_answers(make_cfg, tmp_path):
    qa = [
        ("how do i reset my pin", "use the app settings to reset your pin"),
        ("my card was stolen", "freeze the card in the app and call us"),
        ("what is the transfer limit", "the daily limit is five thousand"),
        ("can i get a new card", "order a new card in the app"),
    ]
    rng = random.Random(0)
    path = tmp_path / "qa.jsonl"
    rows = [dict(zip(("prompt", "response"), rng.choice(qa), strict=True)) for _ in range(40)]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    cfg = make_cfg(
        "task=answer_generation",
        "model=tiny_llama",
        f"data.path={path}",
        "trainer.max_epochs=20",
        "optimizer.lr=1e-2",
        "data.batch_size=4",
        "task.generation.max_new_tokens=12",  # the longest answer is 9 tokens + </s>
        "task.generation.num_examples=2",
    )
    metrics = train(cfg)
    # chance: a uniform guess over the 1,491-token vocabulary has loss ln(1491) = 7.3 and ROUGE-L about 0
    assert metrics["val/loss"] < 1.5 and metrics["test/loss"] < 1.5
    assert metrics["test/rouge_l"] > 0.6  # 0.70-0.89 over seeds 1-3 and 42
    samples = (Path(cfg.paths.output_dir) / "generations.txt").read_text()
    assert samples.count("generated: ") == 2 * samples.count("=== epoch") > 0
