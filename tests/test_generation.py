"""Answer generation (task=answer_generation, model=tiny_gpt): response-only loss, decoding, text metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import QA
from finexp import FinexpError, build
from finexp.config import ConfigError, validate_config
from finexp.data.ner import IGNORE
from finexp.models.backbone import ModelLoadError
from finexp.models.causal_lm import CausalLM, build_causal_lm, generate
from finexp.problems.generation_training import exact_match, response_nll, rouge_l
from finexp.train import train

GPT = ["task=answer_generation", "model=tiny_gpt"]


def test_the_loss_ignores_prompt_tokens(make_cfg, qa_jsonl):
    cfg = make_cfg(*GPT, f"data.path={qa_jsonl}")
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    batch = next(iter(dm.val_dataloader()))
    ids, labels, n_prompt = batch["input_ids"][0], batch["labels"][0], int(batch["prompt_length"][0])
    real = int(batch["attention_mask"][0].sum())
    assert (labels[:n_prompt] == IGNORE).all() and (labels[real:] == IGNORE).all()  # prompt and padding
    assert torch.equal(labels[n_prompt:real], ids[n_prompt:real]) and ids[real - 1] == dm.eos  # answer + end token
    assert dm.tokenizer.decode(ids[n_prompt : real - 1]) in {answer for _, answer in QA}

    logits = torch.randn(*batch["input_ids"].shape, 50)
    targets = batch["labels"].clamp(min=0) % 50  # a 50-token vocabulary is enough to score
    targets[batch["labels"] == IGNORE] = IGNORE
    nll, count = response_nll(logits, targets)
    assert count == (targets != IGNORE).sum()
    changed = logits.clone()
    changed[0, : n_prompt - 1] = torch.randn(n_prompt - 1, 50) * 10  # the predictions of prompt tokens
    assert torch.allclose(response_nll(changed, targets)[0], nll)
    changed[0, n_prompt - 1] += torch.randn(50) * 10  # the prediction of the first answer token
    assert not torch.allclose(response_nll(changed, targets)[0], nll)


def test_generation_runs_end_to_end_with_its_metrics(make_cfg, qa_jsonl):
    cfg = make_cfg(
        *GPT,
        f"data.path={qa_jsonl}",
        "trainer.max_epochs=20",  # 7 steps an epoch: the four answers are memorised by about epoch 15
        "optimizer.lr=1e-2",
        "data.batch_size=4",
        "task.generation.max_new_tokens=12",  # the longest answer is 9 tokens + the end token
        "task.generation.num_examples=2",
    )
    metrics = train(cfg)
    assert metrics["monitor"] == "val/loss"
    for key in ("val/loss", "val/perplexity", "test/loss", "test/perplexity", "test/exact_match", "test/rouge_l"):
        assert key in metrics, key
    assert metrics["val/perplexity"] == pytest.approx(torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-4)
    # chance: a uniform guess over the 30,522-token vocabulary has loss ln(30522) = 10.3, and ROUGE-L about 0
    assert metrics["val/loss"] < 1.5 and metrics["test/loss"] < 1.5
    assert metrics["test/rouge_l"] > 0.8 and metrics["test/exact_match"] >= 0.5  # 0.97-1.0 and 0.75-1.0 over seeds
    samples = (Path(cfg.paths.output_dir) / "generations.txt").read_text()
    assert samples.count("=== epoch") >= 2 and samples.count("generated: ") == 2 * samples.count("=== epoch")


def test_text_metrics_on_hand_worked_cases():
    assert exact_match("Your card, arrives.", "your card arrives") == 1.0
    assert exact_match("your card arrives today", "your card arrives") == 0.0
    # LCS "the cat on the mat" = 5 words: precision 5/6, recall 5/5
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_decoding_greedy_and_sampled(make_cfg):
    torch.manual_seed(0)
    lm = build_causal_lm(None, {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 12}, 40)
    model = CausalLM(lm).eval()
    prompt = torch.tensor([1, 2, 3])
    greedy = generate(model, prompt, eos_id=0, max_new_tokens=5)
    assert greedy == generate(model, prompt, eos_id=0, max_new_tokens=5) and len(greedy) <= 5
    assert len(generate(model, prompt, eos_id=0, max_new_tokens=50)) <= 12 - 3  # stops at the last position
    sampled = [
        generate(model, prompt, 0, 5, do_sample=True, temperature=2.0, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]  # seeded
    with torch.no_grad():
        first = model(prompt.view(1, -1), torch.ones(1, 3, dtype=torch.long))[0, -1].argmax().item()
    stop = generate(model, prompt, eos_id=first, max_new_tokens=5)
    assert stop == []  # the end token is never emitted


def test_generation_needs_a_file_a_decoder_and_lora_targets_c_attn(make_cfg):
    with pytest.raises(ConfigError, match=r"task 'answer_generation' reads your files: set data.path=FILE"):
        validate_config(make_cfg(*GPT))
    with pytest.raises(ConfigError, match=r"task.generation.temperature=0.0 is not allowed: must be > 0"):
        validate_config(make_cfg(*GPT, "data.path=x.jsonl", "task.generation.temperature=0"))
    with pytest.raises(ModelLoadError, match=r"needs a decoder .*'bert' is a masked-language encoder"):
        build_causal_lm(
            None, {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
        )
    cfg = make_cfg(*GPT, "data.path=x.jsonl", "adapter=lora")
    tokenizer = build.tokenizer_from(cfg)
    model = build.model_from(cfg, 0, tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("c_attn.lora_" in n for n in trainable)  # the tied LM head (vocabulary) stays frozen
    cfg = make_cfg(*GPT, "data.path=x.jsonl", "adapter=lora", "task.generation.train_lm_head=true")
    assert build.model_from(cfg, 0, tokenizer).head.weight.requires_grad
    with pytest.raises(FinexpError, match=r"nothing trains.*train_lm_head"):
        build.model_from(make_cfg(*GPT, "data.path=x.jsonl", "adapter=freeze"), 0, tokenizer)
