"""Batched, cached decoding (:func:`generate_batch`) against the one-prompt uncached loop (:func:`generate`)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.text.rouge import rouge_score
from transformers import AutoConfig, AutoModelForCausalLM

from finexp import FinexpError
from finexp.adapters.peft_methods import build_lora, build_prefix_tuning, build_prompt_tuning
from finexp.data.ner import IGNORE
from finexp.models.causal_lm import CausalLM, build_causal_lm, generate, generate_batch, supports_cache
from finexp.problems.generation_training import GenerationModule, rouge_l

VOCAB = 64
PAD, EOS = 0, 1


def tiny_gpt2() -> CausalLM:
    torch.manual_seed(0)
    arch = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 40}
    return CausalLM(build_causal_lm(None, arch, VOCAB)).eval()


def tiny_llama() -> CausalLM:
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
        max_position_embeddings=40,
    )
    return CausalLM(AutoModelForCausalLM.from_config(config)).eval()


def prompts() -> list[torch.Tensor]:
    rng = torch.Generator().manual_seed(1)
    return [torch.randint(2, VOCAB, (n,), generator=rng) for n in (1, 7, 3, 12, 5)]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_greedy_batched_cached_equals_the_per_prompt_loop(build):
    model = build()
    batch = prompts()
    loop = [generate(model, prompt, EOS, max_new_tokens=20) for prompt in batch]
    assert generate_batch(model, batch, PAD, EOS, max_new_tokens=20) == loop
    assert any(len(answer) == 20 for answer in loop)  # at least one row ran the full length: the cache was used
    # 40 positions: the 12-token prompt stops at 28 new tokens, as the loop does
    long = generate_batch(model, batch, PAD, EOS, max_new_tokens=35)
    assert long == [generate(model, prompt, EOS, max_new_tokens=35) for prompt in batch]
    assert all(len(p) + len(a) <= 40 for p, a in zip(batch, long, strict=True))
    assert len(long[3]) == 40 - 12


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_eos_stops_its_row_only(build):
    model = build()
    batch = prompts()
    free = generate_batch(model, batch, PAD, EOS, max_new_tokens=10)
    eos = free[2][3]  # row 2's fourth token becomes the end token
    stopped = generate_batch(model, batch, PAD, eos, max_new_tokens=10)
    assert stopped[2] == free[2][: free[2].index(eos)] and len(stopped[2]) <= 3
    assert stopped == [generate(model, prompt, eos, max_new_tokens=10) for prompt in batch]
    assert all(eos not in answer for answer in stopped)


def test_sampling_is_seeded_and_top_k_restricts_the_draws():
    model = tiny_gpt2()
    batch = prompts()

    def sample(seed: int, **kwargs: object) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return generate_batch(model, batch, PAD, EOS, 15, do_sample=True, temperature=2.0, generator=gen, **kwargs)

    first = sample(3)
    assert first == sample(3)
    assert first != sample(4)
    greedy = generate_batch(model, batch, PAD, EOS, 15)
    assert first != greedy  # temperature 2 over 64 tokens: 75 greedy picks in a row are out of reach
    assert sample(5, top_k=1) == greedy  # top-1 sampling is greedy decoding


def test_prompt_learning_falls_back_to_the_uncached_loop():
    torch.manual_seed(0)
    lora = build_lora(tiny_gpt2(), r=2, dropout=0.0).eval()
    assert supports_cache(lora)
    batch = prompts()
    assert generate_batch(lora, batch, PAD, EOS, 8) == [generate(lora, p, EOS, 8) for p in batch]
    for adapted in (build_prompt_tuning(tiny_gpt2(), 4), build_prefix_tuning(tiny_gpt2(), 4)):
        adapted.eval()
        assert not supports_cache(adapted)
        assert generate_batch(adapted, batch, PAD, EOS, 6) == [generate(adapted, p, EOS, 6) for p in batch]


def test_an_empty_prompt_is_refused():
    with pytest.raises(FinexpError, match=r"a prompt is empty"):
        generate_batch(tiny_gpt2(), [torch.tensor([3]), torch.tensor([], dtype=torch.long)], PAD, EOS)
    assert generate_batch(tiny_gpt2(), [], PAD, EOS) == []


class _Ids:
    """A tokenizer stand-in: decodes ids to their numbers, so answers compare as text."""

    pad_token_id = PAD

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


def test_the_module_answers_a_batch_as_the_loop_answers_each_row():
    model = tiny_gpt2()
    batch = prompts()
    width = max(len(p) for p in batch) + 3
    ids = torch.full((len(batch), width), PAD)
    labels = torch.full((len(batch), width), IGNORE)
    for row, prompt in enumerate(batch):  # right-padded, as the collator gives them; answer "5 6" + end
        ids[row, : len(prompt) + 3] = torch.cat([prompt, torch.tensor([5, 6, EOS])])
        labels[row, len(prompt) : len(prompt) + 3] = torch.tensor([5, 6, EOS])
    tensors = {"input_ids": ids, "labels": labels, "prompt_length": torch.tensor([len(p) for p in batch])}
    module = GenerationModule(model, _Ids(), EOS, max_new_tokens=9).eval()
    answers = module.answer(tensors, range(1, 5), seed=0)
    assert [reference for _, reference, _ in answers] == ["5 6"] * 4
    assert [generated for _, _, generated in answers] == [
        " ".join(map(str, generate(model, batch[row], EOS, 9))) for row in range(1, 5)
    ]


def test_rouge_l_is_torchmetrics_over_unicode_words():
    # torchmetrics' own normalizer keeps [a-z0-9] only: it would score these Cyrillic answers 0
    assert rouge_l("Выручка выросла", "выручка выросла на 5%") == pytest.approx(2 * (1 * 0.5) / 1.5)
    expected = rouge_score("the cat sat on the mat", "the cat on the mat", rouge_keys="rougeL")["rougeL_fmeasure"]
    assert rouge_l("The cat sat, on the mat.", "the cat on the mat") == pytest.approx(float(expected))


class _NoCache(torch.nn.Module):
    """An encoder that ignores ``use_cache`` (as a wrapper or a config that turns caching off would)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs: object) -> object:
        return self.inner(**{**kwargs, "use_cache": False})


def test_a_model_that_returns_no_cache_is_decoded_prompt_by_prompt():
    model = tiny_gpt2()
    batch = prompts()
    expected = [generate(model, prompt, EOS, 8) for prompt in batch]
    model.encoder = _NoCache(model.encoder)
    assert generate_batch(model, batch, PAD, EOS, 8) == expected
