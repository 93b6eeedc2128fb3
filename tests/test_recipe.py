"""recipe=auto: what the config leaves null (epochs, lr, head lr) is derived from the data; a value set wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import text_task
from finexp import recipe
from finexp.config import ConfigError
from finexp.train import train

UNPINNED = "recipe.max_epochs=10"  # conftest's FAST caps the recipe at 3 epochs; these tests use auto's own cap


def test_budget_grows_with_classes_and_shrinks_with_rows(make_cfg):
    cfg = make_cfg(UNPINNED)
    binary = recipe.derive(cfg, train_rows=3118, num_labels=2)  # credit_scoring's train split, batch 32
    assert (binary.steps_per_epoch, binary.target_steps, binary.max_epochs) == (98, 250, recipe.Setting(3, "recipe"))
    intents = recipe.derive(cfg, train_rows=7000, num_labels=77)  # BANKING77-sized: 2,310 steps, capped at 10
    assert intents.target_steps == 30 * 77
    assert intents.max_epochs == recipe.Setting(10, "recipe")
    assert intents.head_lr == recipe.Setting(1e-3, "recipe")  # many classes: the fresh head learns faster
    assert binary.head_lr == recipe.Setting(None, "recipe")  # two classes: the head learns at the lr
    small = recipe.derive(cfg, train_rows=320, num_labels=3)  # 10 steps a pass: 25 passes wanted, 10 allowed
    assert small.max_epochs.value == 10
    middle = recipe.derive(cfg, train_rows=3200 * 2, num_labels=3)  # 200 steps a pass: 2 wanted, 3 at least
    assert middle.max_epochs.value == 3


def test_accumulation_and_devices_count_optimizer_steps(make_cfg):
    cfg = make_cfg(UNPINNED, "trainer.accumulate_grad_batches=2", "trainer.devices=2")
    assert recipe.derive(cfg, train_rows=3200, num_labels=2).steps_per_epoch == 25  # 3200 / (32 x 2) / 2


def test_learning_rate_follows_the_strategy(make_cfg):
    rates = {
        adapter: recipe.derive(make_cfg(UNPINNED, f"adapter={adapter}"), 1000, 2).lr
        for adapter in ("full", "lora", "freeze", "top_layers", "ia3")
    }
    assert rates == {
        "full": recipe.Setting(5e-5, "recipe"),
        "lora": recipe.Setting(5e-4, "recipe"),
        "freeze": recipe.Setting(1e-3, "recipe"),
        "top_layers": recipe.Setting(1e-4, "recipe"),
        "ia3": recipe.Setting(3e-3, "recipe"),
    }


def test_values_the_config_sets_win(make_cfg):
    cfg = make_cfg("trainer.max_epochs=2", "optimizer.lr=2e-4", "optimizer.head_lr=5e-3", "adapter=lora")
    settled = recipe.derive(cfg, train_rows=7000, num_labels=77)
    assert settled.max_epochs == recipe.Setting(2, "config")
    assert settled.lr == recipe.Setting(2e-4, "config")
    assert settled.head_lr == recipe.Setting(5e-3, "config")
    assert settled.target_steps is None  # no budget derived: the epochs were given


def test_fixed_recipe_is_the_old_default(make_cfg):
    cfg = make_cfg(UNPINNED, "recipe=fixed", "adapter=lora")
    settled = recipe.derive(cfg, train_rows=7000, num_labels=77)
    assert (settled.max_epochs.value, settled.lr.value, settled.head_lr.value) == (3, 5e-5, None)


def test_a_custom_adapter_needs_its_own_lr(make_cfg):
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.adapter = {"_target_": "my_package.my_adapter", "_partial_": True}
    with pytest.raises(ConfigError, match=r"optimizer\.lr=null.*my_package\.my_adapter.*set optimizer\.lr"):
        recipe.check(cfg)
    with open_dict(cfg):
        cfg.optimizer.lr = 1e-4
    recipe.check(cfg)  # set: nothing to derive


def test_a_run_records_and_uses_the_derived_recipe(make_cfg, sentiment_csv: Path):
    overrides = [
        UNPINNED,
        *text_task(sentiment_csv),
        "data.batch_size=16",
        "recipe.steps_floor=16",  # 112 train rows = 7 steps a pass: 3 passes for 16 steps
        "recipe.steps_per_class=0",
        "recipe.lr.full=3e-3",  # a tiny random BERT learns at 3e-3, not at a pretrained encoder's 5e-5
        "recipe.min_epochs=1",
        "callbacks.early_stopping=null",
        "test_predictions=false",
    ]
    cfg = make_cfg(*overrides)
    metrics = train(cfg)
    info = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())
    assert info["recipe"]["steps_per_epoch"] == 7
    assert info["recipe"]["max_epochs"] == {"value": 3, "source": "recipe"}
    assert info["recipe"]["lr"] == {"value": 3e-3, "source": "recipe"}
    assert metrics["epochs"] == 3
    saved = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    assert "max_epochs: 3" in saved and "lr: 0.003" in saved  # the run directory holds what ran
    assert metrics["test/accuracy"] > 0.5  # two balanced classes
    again = make_cfg(*overrides)  # the same config, nulls and all, into the same directory: a finished rerun
    with open_dict(again):
        again.paths.output_dir = cfg.paths.output_dir
    assert train(again) == metrics
