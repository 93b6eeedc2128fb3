"""The memory estimate printed before any weights load (model.check_memory): exact parameter and weight bytes from
the meta device, the estimate within 25% of a training step's measured peak (full, LoRA, 4-bit), what checkpointing
and bf16 change, the refusal of a run that cannot fit, and metrics.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_llama, sentiment_frame, text_task
from finexp.build import model_from, tokenizer_from
from finexp.config import validate_config
from finexp.config.resolvers import package_path
from finexp.models import memory
from finexp.train import estimate_run_memory, train

LABELS = ["bearish", "bullish"]
TINY_LLAMA_TOKENIZER = package_path("finexp", "assets/tiny_llama_tokenizer")
needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="no bitsandbytes")


@pytest.fixture
def headlines(tmp_path: Path) -> Path:
    path = tmp_path / "headlines.csv"
    sentiment_frame(n=48).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama saved with save_pretrained (bf16, random weights): what a 4-bit load quantizes."""
    directory = tmp_path_factory.mktemp("llama-bf16")
    return save_tiny_llama(directory, vocab_size=1491)


def hf_llama(directory: Path) -> list[str]:
    return [
        "model=hf",
        f"model.name_or_path={directory}",
        f"model.tokenizer={TINY_LLAMA_TOKENIZER}",
        "model.pooling=last",
        "model.local_files_only=true",
    ]


def _estimate_and_model(cfg) -> tuple[memory.MemoryEstimate, torch.nn.Module]:
    validate_config(cfg)
    tokenizer = tokenizer_from(cfg)
    estimate = estimate_run_memory(cfg, len(LABELS), tokenizer, LABELS)
    torch.manual_seed(0)
    return estimate, model_from(cfg, len(LABELS), tokenizer, LABELS).train()


def _measured_peak(model: torch.nn.Module, cfg) -> int:
    step = memory.classification_step(model, cfg.data.batch_size, cfg.data.max_length, 1400, len(LABELS))
    return memory.measure_step_peak(step, model, step.optimizer)  # type: ignore[attr-defined]


@pytest.mark.parametrize("adapter", ["full", "lora", "freeze"])
def test_parameters_and_weight_bytes_are_the_real_models(make_cfg, headlines, adapter):
    cfg = make_cfg(*text_task(headlines), "model=tiny_llama", f"adapter={adapter}")
    estimate, real = _estimate_and_model(cfg)
    assert estimate.parameters == sum(p.numel() for p in real.parameters())
    assert estimate.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert estimate.weights == memory.resident_bytes(real)  # to the byte: nothing loaded, nothing allocated
    assert estimate.gradients == 4 * estimate.trainable
    assert estimate.optimizer == 8 * estimate.trainable + 4 * sum(p.requires_grad for p in real.parameters())


SHAPE = ["data.batch_size=8", "data.max_length=64"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny_gpt", "adapter=full"],
        ["model=tiny_gpt", "adapter=lora"],
        ["model=tiny_llama", "adapter=full"],
        ["model=tiny_llama", "adapter=lora"],
        ["model=tiny_llama", "adapter=full", "model.gradient_checkpointing=true"],
    ],
    ids=["gpt-full", "gpt-lora", "llama-full", "llama-lora", "llama-checkpointing"],
)
def test_the_estimate_is_within_25_percent_of_the_measured_peak(make_cfg, headlines, overrides):
    estimate, model = _estimate_and_model(make_cfg(*text_task(headlines), *overrides, *SHAPE))
    measured = _measured_peak(model, make_cfg(*text_task(headlines), *overrides, *SHAPE))
    assert abs(estimate.total / measured - 1) <= 0.25, (estimate.total, measured)


@pytest.mark.parametrize(
    ("overrides", "tokens", "prefix"),
    [
        (["model=tiny_llama", "adapter=prompt_tuning"], 64 + 20, 0),  # 20 virtual tokens open every sequence
        (["model=tiny_llama", "adapter=prefix_tuning"], 64, 20),  # 20 more keys and values in every layer
        (["model=tiny_gpt", "adapter=prefix_tuning"], 64, 20),
    ],
    ids=["llama-prompt", "llama-prefix", "gpt-prefix"],
)
def test_prompt_and_prefix_tuning_are_estimated_with_their_virtual_tokens(
    make_cfg, headlines, overrides, tokens, prefix
):
    cfg = make_cfg(*text_task(headlines), *overrides, "adapter.num_virtual_tokens=20", *SHAPE)
    estimate, model = _estimate_and_model(cfg)  # built on meta: the adapter's forward check is skipped there
    assert (estimate.shape.tokens, estimate.shape.prefix_tokens) == (tokens, prefix)
    assert estimate.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)  # the prompt's
    assert estimate.weights == memory.resident_bytes(model)
    assert abs(estimate.total / _measured_peak(model, cfg) - 1) <= 0.15, estimate.total


@needs_bitsandbytes
def test_a_4bit_base_is_estimated_from_its_config_alone(make_cfg, headlines, llama_dir, monkeypatch):
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=qlora", *SHAPE)
    estimate, model = _estimate_and_model(cfg)
    assert estimate.weights == memory.resident_bytes(model)  # NF4 packing, absmax, code books: to the byte
    assert abs(estimate.total / _measured_peak(model, cfg) - 1) <= 0.25
    plain_cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=lora")
    unquantized = estimate_run_memory(plain_cfg, 2, tokenizer_from(cfg), LABELS)
    assert estimate.weights < unquantized.weights  # the same model with its linear weights unquantized


def test_checkpointing_lowers_the_estimate_and_bf16_halves_the_weights(make_cfg, headlines):
    base = [*text_task(headlines), "model=tiny_llama", "data.batch_size=16", "data.max_length=256"]
    tokenizer = tokenizer_from(make_cfg(*base))
    plain = estimate_run_memory(make_cfg(*base), 2, tokenizer, LABELS)
    checkpointed = estimate_run_memory(make_cfg(*base, "model.gradient_checkpointing=true"), 2, tokenizer, LABELS)
    assert checkpointed.total < plain.total
    assert checkpointed.total == plain.total_for(True) and plain.total == checkpointed.total_for(False)
    half = make_cfg(*base, "model.dtype=bfloat16", "trainer.precision=bf16-true")
    bf16 = estimate_run_memory(half, 2, tokenizer, LABELS)
    assert 2 * bf16.weights == plain.weights
    assert bf16.activations < plain.activations


def test_measure_step_peak_counts_what_a_step_allocates(make_cfg, headlines):
    model = torch.nn.Linear(256, 256)

    def step() -> None:
        scratch = torch.empty(2**20, dtype=torch.uint8)  # 1 MiB alive at once, then freed
        del scratch

    assert memory.measure_step_peak(step, model) == memory.resident_bytes(model) + 2**20


def test_a_run_records_its_estimate_in_metrics_json(make_cfg, headlines, capsys):
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "trainer.max_epochs=1")
    expected = estimate_run_memory(cfg, 2, tokenizer_from(cfg), LABELS)
    train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["memory/estimate_mb"] == pytest.approx(expected.total / 2**20)
    assert metrics["memory/estimate_weights_mb"] == pytest.approx(expected.weights / 2**20)
    assert "memory/peak_mb" in metrics  # the measured peak beside it
    out = capsys.readouterr().out
    assert "memory estimate of a training step" in out and "cpu free:" in out


def test_a_run_that_cannot_fit_stops_before_loading_weights(make_cfg, headlines, llama_dir, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**20)  # 1 MiB free

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the memory check")

    monkeypatch.setattr("finexp.models.backbone.load_model", no_weights)
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir))
    with pytest.raises(memory.MemoryCheckError, match=r"needs ~.* GiB .* 0\.00 GiB free") as refused:
        train(cfg)
    assert "model.check_memory=false" in str(refused.value)
    assert "model.gradient_checkpointing=true" in str(refused.value)


def test_check_memory_false_skips_the_check(make_cfg, headlines, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**20)
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "trainer.max_epochs=1", "model.check_memory=false")
    train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "memory/estimate_mb" not in metrics
