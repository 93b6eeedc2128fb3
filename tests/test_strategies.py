"""trainer=fsdp / deepspeed: the strategy built from the config, the layers it wraps, what it refuses on CPU.

Lightning's FSDP and DeepSpeed refuse CPU, so no fit runs here; these tests check everything up to the fit: the
composed strategy, the FSDP units it would create for a real (tiny) Llama with LoRA, and the checkpoint rules.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from finexp import FinexpError
from finexp.adapters.checkpoint import TrainableOnlyCheckpoint
from finexp.build import model_from, tokenizer_from
from finexp.config import ConfigError, validate_config
from finexp.strategies import LayerWrapPolicy, fsdp, layer_classes
from finexp.targets import instantiate

LLAMA_LORA = ["model=tiny_llama", "task=text_classification", "data.path=x.csv", "adapter=lora"]


def _units(policy: LayerWrapPolicy, model) -> list[type]:
    return [type(m) for m in policy._run_policy(model, set(), {})]


def test_fsdp_config_builds_a_layer_wrapping_strategy_that_keeps_frozen_and_trainable_weights_apart(make_cfg):
    cfg = make_cfg(*LLAMA_LORA, "trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    assert isinstance(strategy.kwargs["auto_wrap_policy"], LayerWrapPolicy)
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"


def test_the_policy_wraps_each_decoder_layer_of_a_lora_llama(make_cfg):
    cfg = make_cfg(*LLAMA_LORA)
    model = model_from(cfg, 3, tokenizer_from(cfg))
    assert any(p.requires_grad for p in model.parameters()) and not all(p.requires_grad for p in model.parameters())
    assert _units(LayerWrapPolicy(), model) == [LlamaDecoderLayer, LlamaDecoderLayer]  # 2 layers, 2 FSDP units


def test_the_policy_finds_an_encoders_layers_and_takes_names(make_cfg):
    cfg = make_cfg("model=tiny_bert", "task=text_classification", "data.path=x.csv")
    model = model_from(cfg, 2, tokenizer_from(cfg))
    assert BertLayer in layer_classes(model)
    assert _units(LayerWrapPolicy(["BertLayer"]), model) == [BertLayer] * model.encoder.config.num_hidden_layers


def test_an_unknown_layer_name_is_a_clear_error(make_cfg):
    cfg = make_cfg("model=tiny_bert", "task=text_classification", "data.path=x.csv")
    model = model_from(cfg, 2, tokenizer_from(cfg))
    with pytest.raises(FinexpError, match=r"trainer.strategy.auto_wrap=\[ClassName"):
        LayerWrapPolicy(["LlamaDecoderLayer"])._run_policy(model, set(), {})
    with pytest.raises(FinexpError, match=r"trainer\.strategy\.auto_wrap='decoder'"):
        fsdp(auto_wrap="decoder")


@pytest.mark.parametrize("trainer", ["fsdp", "deepspeed", "deepspeed_zero3"])
def test_sharded_strategies_are_refused_on_cpu_with_the_alternative(make_cfg, trainer):
    cfg = make_cfg("model=tiny_bert", "task=sentiment", "data.path=x.csv", f"trainer={trainer}")
    cfg.trainer.accelerator = "cpu"
    deepspeed_missing = trainer.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None
    expected = r"pip install deepspeed" if deepspeed_missing else r"does not run on CPU.*on CPU use trainer=ddp_cpu"
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg)


def test_deepspeed_zero3_is_stage_3_of_the_deepspeed_config(make_cfg):
    zero2 = make_cfg("model=tiny_bert", "task=sentiment", "data.path=x.csv", "trainer=deepspeed")
    zero3 = make_cfg("model=tiny_bert", "task=sentiment", "data.path=x.csv", "trainer=deepspeed_zero3")
    assert (zero2.trainer.strategy.stage, zero3.trainer.strategy.stage) == (2, 3)
    assert zero3.trainer.strategy._target_ == zero2.trainer.strategy._target_


def test_sharded_runs_keep_full_checkpoints(monkeypatch):
    """A pretrained, partly frozen model: DDP checkpoints drop the frozen weights, FSDP ones stay whole (the state
    dict FSDP gathers on rank 0 is what finexp-eval reads)."""
    import finexp.adapters.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "frozen_keys", lambda module: ["frozen"])
    pretrained = SimpleNamespace(
        model=SimpleNamespace(encoder=SimpleNamespace(config=SimpleNamespace(name_or_path="x")))
    )
    callback = TrainableOnlyCheckpoint()
    checkpoint = {"state_dict": {"frozen": 1, "lora": 2}}
    callback.on_save_checkpoint(SimpleNamespace(strategy=FSDPStrategy()), pretrained, checkpoint)
    assert checkpoint == {"state_dict": {"frozen": 1, "lora": 2}}
    callback.on_save_checkpoint(SimpleNamespace(strategy=DDPStrategy()), pretrained, checkpoint)
    assert checkpoint == {"state_dict": {"lora": 2}, ckpt.KEY: ["frozen"]}
