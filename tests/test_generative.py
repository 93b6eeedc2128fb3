"""method=generative: answer scoring on tiny decoders, learning a 3-class task end to end (reproduced by finexp-eval
and the Predictor), and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import sentiment_frame, text_task
from finexp import FinexpError
from finexp.build import model_from, tokenizer_from
from finexp.evaluate import evaluate, load_run
from finexp.inference import Predictor
from finexp.models.generative import GenerativePrompt
from finexp.train import train

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


@pytest.mark.parametrize("chat", [False, True])
def test_tiny_llama_scores_answers_with_and_without_its_chat_template(make_cfg, three_class_csv, chat):
    overrides = ["method.chat_template=true", "method.system_prompt='Be brief.'"] if chat else []
    cfg = make_cfg(*text_task(three_class_csv), "model=tiny_llama", "method=generative", *overrides)
    tokenizer = tokenizer_from(cfg)
    model = model_from(cfg, 3, tokenizer, LABELS).eval()
    # plain: " bearish" (the template's trailing space joins the answer) is one BPE token, so each row is one
    # sequence read at its end; chat: "bearish" after the assistant marker's newline is several, B x C sequences
    assert [len(a) == 1 for a in model.answers] == [not chat] * 3
    texts = ["ACME shares fall", "Globex profit beats forecast"]
    rows = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(rows["input_ids"], rows["attention_mask"])

    instruction = cfg.method.prompt_template.replace("{choices}", ", ".join(LABELS))
    for b, text in enumerate(texts):
        prompt = instruction.replace("{text}", text)
        if chat:
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert prompt.startswith("<s><|system|>\nBe brief.</s>\n<|user|>\nInstruction:")
        else:
            prompt = "<s>" + prompt.rstrip(" ")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c, label in enumerate(LABELS):
            word = tokenizer(("" if chat else " ") + label, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                hidden = model.encoder(input_ids=torch.tensor([ids + word])).last_hidden_state[0]
            log_probs = model.head(hidden).log_softmax(-1)
            expected = sum(log_probs[len(ids) + i - 1, w] for i, w in enumerate(word))
            torch.testing.assert_close(scores[b, c], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chat", [False, True])
def test_tiny_llama_learns_three_classes_and_eval_and_predictor_reproduce_it(make_cfg, tmp_path, chat):
    path = tmp_path / "headlines3.csv"
    sentiment_frame(n=180, neutral=True).to_csv(path, index=False)
    cfg = make_cfg(
        *text_task(path),
        "model=tiny_llama",
        "method=generative",
        "adapter=full",
        f"method.chat_template={str(chat).lower()}",
        # random weights learn at a from-scratch lr (5e-5 is for pretrained ones) and need steps: batches of 8.
        # The LM loss first learns which words answer (val/f1_macro flat at chance for an epoch or two while
        # val/loss falls), so early stopping on val/f1_macro would stop it there.
        "optimizer.lr=3e-3",
        "data.batch_size=8",
        "trainer.max_epochs=8",
        "callbacks.early_stopping=null",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/accuracy"] >= 0.9 and metrics["test/f1_macro"] >= 0.9  # chance: 0.33
    columns = [f"prob_{label}" for label in LABELS]
    trained = pd.read_csv(run / "test_predictions.csv")

    eval_cfg = make_cfg(
        f"ckpt_path={metrics['best_checkpoint']}",
        "analysis=none",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    evaluated = evaluate(eval_cfg)
    assert evaluated["same_test_split_as_training"] is True
    assert evaluated["test/accuracy"] == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    predictions = pd.read_csv(Path(eval_cfg.paths.output_dir) / "predictions.csv")
    np.testing.assert_allclose(predictions[columns].to_numpy(), trained[columns].to_numpy(), atol=1e-5, rtol=0)

    predictor = Predictor.from_checkpoint(metrics["best_checkpoint"], device="cpu")
    probs, errors = predictor.probabilities(load_run(metrics["best_checkpoint"]).datamodule.splits.test)
    assert errors == [None] * len(trained)
    np.testing.assert_allclose(probs, trained[columns].to_numpy(), atol=1e-5, rtol=0)
    assert predictions["predicted"].tolist() == trained["predicted"].tolist()


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


def test_few_shot_evaluation_without_training_carries_its_examples_to_eval_and_the_predictor(make_cfg, tmp_path):
    path = tmp_path / "headlines3.csv"
    sentiment_frame(n=90, neutral=True).to_csv(path, index=False)
    base = [*text_task(path), "model=tiny_llama", "method=generative", "trainer.max_epochs=0"]  # no training
    cfg = make_cfg(*base, "method.in_context_examples=3")
    metrics = train(cfg)
    assert metrics["epochs"] == 0 and Path(metrics["best_checkpoint"]).is_file()

    run = load_run(metrics["best_checkpoint"])  # a rebuilt model: its examples come from the checkpoint
    context = run.module.model.prompt.context
    shots = context.split("\n\n")[:-1]
    assert len(shots) == 3 and all(s.startswith("Instruction: What is the sentiment") for s in shots)
    train_rows = set(run.datamodule.texts["train"])
    for shot in shots:  # each a solved train row: its text, then its label's word as the answer
        text = shot.split("\nInput: ")[1].split("\nAnswer: ")[0]
        assert text in train_rows and shot.rsplit("Answer: ", 1)[1] in LABELS

    columns = [f"prob_{label}" for label in LABELS]
    trained = pd.read_csv(Path(cfg.paths.output_dir) / "test_predictions.csv")
    predictor = Predictor.from_checkpoint(metrics["best_checkpoint"], device="cpu")
    probs, _ = predictor.probabilities(run.datamodule.splits.test)
    np.testing.assert_allclose(probs, trained[columns].to_numpy(), atol=1e-5, rtol=0)

    again = make_cfg(*base, "method.in_context_examples=3")
    assert load_run(train(again)["best_checkpoint"]).module.model.prompt.context == context  # seeded: same examples
    zero = make_cfg(*base)  # zero-shot: no examples, other scores
    zero_shot = pd.read_csv(Path(zero.paths.output_dir) / "test_predictions.csv") if train(zero) else None
    assert not np.allclose(zero_shot[columns].to_numpy(), trained[columns].to_numpy(), atol=1e-4)
