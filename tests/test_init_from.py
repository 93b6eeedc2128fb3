"""model.init_from: a run starts from an earlier run's checkpoint or export; a new label set re-initialises the head."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import FAST, sentiment_frame, text_task
from finexp import FinexpError, build
from finexp.config import config_dir
from finexp.export import export
from finexp.models.init_from import settle_head
from finexp.runs import initial_weights
from finexp.train import train


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> str:
    """One short training run shared by the tests of this module (its best checkpoint)."""
    root = tmp_path_factory.mktemp("earlier")
    path = root / "headlines.csv"
    sentiment_frame().to_csv(path, index=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        overrides = [*FAST, *text_task(path), "trainer.max_epochs=1", "optimizer.lr=3e-3", "seed=3"]
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.cache_dir = str(root / "run"), str(root / "cache")
    return train(cfg)["best_checkpoint"]


def built(make_cfg, path: Path, init_from: str, *overrides: str):
    cfg = make_cfg(*text_task(path), f"model.init_from={init_from}", "seed=11", *overrides)
    initial = initial_weights(cfg.model.init_from) if cfg.model.init_from else None  # what finexp-train does first
    return build.model_from(cfg, 2, build.tokenizer_from(cfg), initial=initial)


def test_init_from_checkpoint_or_export_copies_encoder_and_head(make_cfg, sentiment_csv, earlier_run, tmp_path):
    state = torch.load(earlier_run, weights_only=True)["state_dict"]
    exported = tmp_path / "exported"
    export(earlier_run, exported)
    fresh = built(make_cfg, sentiment_csv, "null")  # seed 11: a different random init than the earlier run's seed 3
    for source in (earlier_run, str(exported)):
        model = built(make_cfg, sentiment_csv, source)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, state[f"model.{name}"], msg=f"{source}: {name}")
        assert not torch.equal(fresh.head.weight, model.head.weight)
        assert settle_head(model, ["bearish", "bullish"])["head"] == "kept"
    lora = built(make_cfg, sentiment_csv, earlier_run, "adapter=lora")  # a new strategy on top of the earlier encoder
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) < 0.2 * sum(
        p.numel() for p in lora.parameters()
    )


def test_a_changed_label_set_reinitializes_the_head_and_says_so(make_cfg, earlier_run, tmp_path, caplog):
    path = tmp_path / "three.csv"
    sentiment_frame(150, neutral=True).to_csv(path, index=False)  # a third class, with its own wording
    cfg = make_cfg(*text_task(path), f"model.init_from={earlier_run}", "trainer.max_epochs=4", "optimizer.lr=3e-3")
    with caplog.at_level(logging.WARNING, logger="finexp"):
        metrics = train(cfg)
    assert "label set changed (bearish, bullish -> bearish, bullish, neutral)" in caplog.text
    info = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())
    assert info["init_from"]["head"] == "reinitialized" and info["init_from"]["previous_labels"] == [
        "bearish",
        "bullish",
    ]
    assert metrics["test/f1_macro"] > 0.7  # the new head learned all three classes (chance: about 0.33)


def test_init_from_a_missing_or_mismatched_source_fails_clearly(make_cfg, sentiment_csv, earlier_run, tmp_path):
    with pytest.raises(FinexpError, match="no such checkpoint"):
        built(make_cfg, sentiment_csv, str(tmp_path / "nope.ckpt"))
    with pytest.raises(FinexpError, match="does not match this run's model"):
        built(make_cfg, sentiment_csv, earlier_run, "model.architecture.hidden_size=16")
