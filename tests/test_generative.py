"""method=generative: answer scoring on a tiny decoder and its bad-input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import sentiment_frame, text_task
from finexp import FinexpError
from finexp.build import model_from, tokenizer_from
from finexp.models.generative import GenerativePrompt

LABELS = ["bearish", "bullish", "neutral"]


@pytest.fixture
def three_class_csv(tmp_path: Path) -> Path:
    path = tmp_path / "headlines3.csv"
    sentiment_frame(n=180, neutral=True).to_csv(path, index=False)
    return path


def generative_cfg(make_cfg, path: Path, *overrides: str):
    return make_cfg(*text_task(path), "model=tiny_gpt", "method=generative", *overrides)


def test_scores_are_the_summed_log_likelihood_of_each_answer(make_cfg, three_class_csv):
    cfg = generative_cfg(make_cfg, three_class_csv, "method.label_words={bearish:down,bullish:[up,up],neutral:flat}")
    tokenizer = tokenizer_from(cfg)
    model = model_from(cfg, 3, tokenizer, LABELS).eval()
    rows = tokenizer(["ACME shares fall", "Globex profit"], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(rows["input_ids"], rows["attention_mask"])

    assert scores.shape == (2, 3)
    template = cfg.method.prompt_template.replace("{choices}", "down, up up, flat")
    for b, text in enumerate(["ACME shares fall", "Globex profit"]):
        prompt = tokenizer(template.replace("{text}", text).rstrip(" "))["input_ids"][:-1]  # [CLS] ... (no [SEP])
        for c, answer in enumerate(["down", "up up", "flat"]):
            word = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + word])
            with torch.no_grad():
                log_probs = model.head(model.encoder(input_ids=ids).last_hidden_state).log_softmax(-1)[0]
            expected = sum(log_probs[len(prompt) + i - 1, w] for i, w in enumerate(word))
            torch.testing.assert_close(scores[b, c], expected, atol=1e-5, rtol=0)
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(model.loss(scores, labels), -(scores[0, 0] + scores[1, 2]) / 2)


def test_generative_on_an_encoder_is_refused_naming_the_method(make_cfg, three_class_csv):
    cfg = make_cfg(*text_task(three_class_csv), "model=tiny_bert", "method=generative")
    with pytest.raises(FinexpError, match=r"method=generative needs a decoder .*model=tiny_gpt"):
        model_from(cfg, 3, tokenizer_from(cfg), LABELS)


def test_label_words_that_tokenize_differently_after_the_prompt_are_refused(make_cfg, three_class_csv):
    cfg = generative_cfg(make_cfg, three_class_csv)
    tokenizer = tokenizer_from(cfg)
    # a template ending inside a word: "Answer:x" + "down" reads as the one word "xdown", not "x" then "down"
    prompt = GenerativePrompt(tokenizer, "{text} Answer:x", {"bearish": "down", "bullish": "up", "neutral": "flat"})
    with pytest.raises(FinexpError, match=r"method\.label_words\.bearish='down' tokenizes differently"):
        prompt.render(LABELS)
    with pytest.raises(FinexpError, match=r"method\.label_words has answers for .* e\.g\. method\.label_words="):
        GenerativePrompt(tokenizer, label_words={"bearish": "down"}).render(LABELS)
    with pytest.raises(FinexpError, match=r"method\.chat_template=true but this tokenizer has no chat template"):
        GenerativePrompt(tokenizer, chat_template=True)
    with pytest.raises(FinexpError, match=r"method\.prompt_template=.* exactly one \{text\}"):
        GenerativePrompt(tokenizer, "no text here")
