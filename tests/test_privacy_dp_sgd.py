"""DP-SGD with Opacus inside Lightning's loop: the ε reported is the accountant's, per-row gradients are clipped,
Lightning's clipping is off, unsupported layers are named, and the adapters train privately."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch import nn

from conftest import text_task
from finexp import build, recipe
from finexp.config import ConfigError, validate_config
from finexp.data.batching import PadCollator
from finexp.privacy import PoissonBatchSampler, PrivacyError
from finexp.privacy.dp_sgd import DPSGD, check_layers
from finexp.train import train


def test_epsilon_is_the_accountants_and_meets_the_target(make_cfg, sentiment_csv):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "privacy=dp_sgd",
        "privacy.epsilon=3",
        "adapter=lora",
        "trainer.max_epochs=2",
        "data.batch_size=16",
        "test=false",
        "analysis=none",  # the trust report is tested elsewhere
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    sigma, q, steps = saved["privacy/noise_multiplier"], saved["privacy/sample_rate"], saved["privacy/steps"]
    assert q == pytest.approx(16 / 112) and steps == 2 * 7  # round(1/q) Poisson batches per epoch
    assert saved["privacy/delta"] == pytest.approx(1 / 112)  # default δ = 1/N
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    assert saved["privacy/epsilon"] == pytest.approx(accountant.get_epsilon(delta=1 / 112), rel=1e-9)
    assert 3.0 - 0.02 <= saved["privacy/epsilon"] <= 3.0  # noise solved for the planned steps meets the target
    assert metrics["privacy/epsilon"] == saved["privacy/epsilon"]
    assert metrics["params/trainable"] < metrics["params/total"] / 10  # LoRA + head only
    per_epoch = pd.read_csv(run / "csv" / "metrics.csv")["privacy/epsilon"].dropna().tolist()
    assert len(per_epoch) == 2 and per_epoch[0] < per_epoch[1] == pytest.approx(saved["privacy/epsilon"])
    assert "gradient_clip_val: null" in (run / "config.yaml").read_text()  # Lightning's clipping was turned off


class _ClipProbe(pl.Callback):
    """After each DP step, read what Opacus used: per-row gradients, their clip factors, the clipped sum."""

    def __init__(self, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.clipped_norms: list[torch.Tensor] = []
        self.raw_norms: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        optimizer = trainer.strategy.optimizers[0]
        assert isinstance(optimizer, DPOptimizer)
        params = optimizer.params
        samples = [p.grad_sample.reshape(len(p.grad_sample), -1) for p in params]
        raw = torch.stack([s.norm(dim=1) for s in samples], dim=1).norm(dim=1)
        factor = (self.max_grad_norm / (raw + 1e-6)).clamp(max=1.0)
        clipped = torch.stack([(s * factor[:, None]).norm(dim=1) for s in samples], dim=1).norm(dim=1)
        for p, s in zip(params, samples, strict=True):  # what Opacus summed is exactly these clipped rows
            torch.testing.assert_close(p.summed_grad.reshape(-1), (s * factor[:, None]).sum(0), rtol=1e-4, atol=1e-6)
            # no noise: the step's gradient is the clipped sum over the expected batch size
            torch.testing.assert_close(p.grad.reshape(-1), p.summed_grad.reshape(-1) / 16, rtol=1e-4, atol=1e-7)
        self.raw_norms.append(raw)
        self.clipped_norms.append(clipped)


def _pieces(make_cfg, csv, *overrides):
    cfg = make_cfg(*text_task(csv), "privacy=dp_sgd", "data.batch_size=16", *overrides)
    privacy = build.privacy_from(cfg)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer, privacy=privacy)
    datamodule.prepare()
    recipe.settle(cfg, datamodule)  # as finexp-train does: the null lr becomes the adapter's
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    return privacy, datamodule, model, build.module_from(cfg, model, datamodule)


@pytest.mark.parametrize("adapter", ["full", "top_layers"])
def test_per_row_gradients_are_clipped_to_max_grad_norm(make_cfg, sentiment_csv, adapter):
    norm = 0.05  # far below the raw per-row norms, so clipping bites on every row
    privacy, datamodule, _, module = _pieces(
        make_cfg,
        sentiment_csv,
        f"adapter={adapter}",
        "privacy.epsilon=null",
        "privacy.noise_multiplier=0",
        f"privacy.max_grad_norm={norm}",
    )
    probe = _ClipProbe(norm)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[privacy.dp_sgd, probe],
    )
    trainer.fit(module, datamodule=datamodule)
    raw, clipped = torch.cat(probe.raw_norms), torch.cat(probe.clipped_norms)
    assert len(raw) > 10 and (raw > norm).all()
    assert (clipped <= norm * (1 + 1e-4)).all()
    assert privacy.dp_sgd.steps == 2
    # The accountant travels in checkpoints as plain numbers (weights_only loading), so a resumed run keeps counting.
    buffer = io.BytesIO()
    torch.save(privacy.dp_sgd.state_dict(), buffer)
    resumed = DPSGD(noise_multiplier=1.0)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert resumed.steps == 2 and resumed.noise_multiplier == 0
    assert not hasattr(next(module.parameters()), "grad_sample")  # hooks and buffers are gone after fit


def test_poisson_batches_and_empty_batches():
    sampler = PoissonBatchSampler(1000, 50, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 20
    sizes = [len(b) for b in first]
    assert len(set(sizes)) > 3 and 35 < sum(sizes) / len(sizes) < 65  # variable, ~50 on average
    assert list(sampler) == first  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != first
    empty = PadCollator(0)([])
    assert empty["input_ids"].shape == (0, 1) and empty["labels"].shape == (0,)


def test_lightning_clipping_and_accumulation_are_rejected(make_cfg, sentiment_csv):
    privacy, datamodule, _, module = _pieces(make_cfg, sentiment_csv)
    for kwargs, key in [
        ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val"),
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches"),
    ]:
        trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=1, callbacks=[privacy.dp_sgd], **kwargs)
        with pytest.raises(PrivacyError, match=key):
            trainer.fit(module, datamodule=datamodule)
    for overrides, key in [
        (["privacy.epsilon=-1"], "privacy.epsilon"),
        (["privacy.noise_multiplier=1.0"], "exactly one of privacy.epsilon"),
        (["task.class_weights=balanced"], "task.class_weights"),
        (["trainer.accumulate_grad_batches=4"], "trainer.accumulate_grad_batches"),
    ]:
        with pytest.raises(ConfigError, match=key):
            validate_config(make_cfg(*text_task(sentiment_csv), "privacy=dp_sgd", *overrides))


def test_layers_opacus_cannot_handle_are_named(make_cfg, sentiment_csv):
    privacy, datamodule, model, module = _pieces(make_cfg, sentiment_csv)
    model.head = nn.Sequential(nn.BatchNorm1d(32), nn.Linear(32, 2))
    with pytest.raises(PrivacyError, match=r"model\.head\.0 \(BatchNorm1d: BatchNorm cannot"):
        check_layers(module)

    class SharedOffset(nn.Module):  # a layer fed one row for the whole batch: no per-row gradient exists
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(32, 2)
            self.offset = nn.Linear(4, 2)

        def forward(self, x):
            return self.inner(x) + self.offset(torch.ones(1, 4))

    model.head = SharedOffset()
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=1, callbacks=[privacy.dp_sgd])
    with pytest.raises(PrivacyError, match=r"per-row gradients.*model\.head\.offset\.weight"):
        trainer.fit(module, datamodule=datamodule)


def test_dp_sgd_needs_poisson_batches(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "privacy=dp_sgd")
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)  # no privacy plan: shuffled batches
    datamodule.prepare()
    recipe.settle(cfg, datamodule)
    module = build.module_from(cfg, build.model_from(cfg, 2, tokenizer), datamodule)
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=1, callbacks=[DPSGD(noise_multiplier=1.0)])
    with pytest.raises(PrivacyError, match="Poisson"):
        trainer.fit(module, datamodule=datamodule)


class _FirstBatchEmpty(PoissonBatchSampler):
    def __iter__(self):
        yield []
        yield from list(super().__iter__())[1:]


def test_an_empty_poisson_batch_takes_a_noise_only_step(make_cfg, sentiment_csv):
    privacy, datamodule, model, module = _pieces(
        make_cfg, sentiment_csv, "adapter=freeze", "privacy.epsilon=null", "privacy.noise_multiplier=1.0"
    )
    datamodule.train_batch_sampler = _FirstBatchEmpty
    before = model.head.weight.detach().clone()

    class Moved(pl.Callback):
        after_first = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                assert outputs is None or outputs == {}  # the empty batch had no loss
                Moved.after_first = model.head.weight.detach().clone()

    moved = Moved()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        max_steps=2,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[privacy.dp_sgd, moved],
    )
    trainer.fit(module, datamodule=datamodule)
    assert privacy.dp_sgd.steps == 2  # the empty batch was counted by the accountant
    assert moved.after_first is not None and not torch.equal(moved.after_first, before)  # moved by noise alone
