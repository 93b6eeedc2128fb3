"""The training recipe: the settings a run leaves open (``null``), derived from the data once its splits are known.

One fixed recipe (3 epochs at lr 5e-5) under-trains many-class and small data and over-trains nothing in
particular; ``recipe=auto`` sizes the budget in optimizer steps instead, so BANKING77's 77 intents get more passes
than a binary credit table, and picks the learning rate of the strategy that trains (full fine-tuning, LoRA,
a linear probe, ... each has its own scale). The rules, their constants in ``conf/recipe/*.yaml``:

- ``trainer.max_epochs`` (when null): enough epochs for ``max(steps_floor, steps_per_class x classes)`` optimizer
  steps, within ``[min_epochs, max_epochs]``; early stopping (``callbacks.early_stopping``) and the best-checkpoint
  callback then end it sooner and keep the best epoch;
- ``optimizer.lr`` (when null): ``recipe.lr[<adapter>]``, the strategy's rate;
- ``optimizer.head_lr`` (when null): ``recipe.head_lr`` for tasks of ``recipe.many_classes`` labels or more (a
  freshly initialised 77-way head learns slowly at an encoder's rate), else the lr.

A value the config sets (the command line, an experiment, a contender) always wins: the recipe fills only what
is null. Every value, derived or set, goes to ``run_info.json`` (``recipe``) with where it came from, and to the
log at the start of the run. This module is plain Python: it needs the composed config and two numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

from finexp.config import ConfigError

FILLS = ("trainer.max_epochs", "optimizer.lr", "optimizer.head_lr")  # the keys a null of which the recipe settles

# adapter _target_ (its function's name) -> the adapter group's option, the key of recipe.lr
ADAPTER_OPTIONS = {
    "train_everything": "full",
    "freeze_encoder": "freeze",
    "train_top_layers": "top_layers",
    "build_lora": "lora",
    "build_qlora": "qlora",
    "build_ia3": "ia3",
    "build_prompt_tuning": "prompt_tuning",
    "build_prefix_tuning": "prefix_tuning",
    "build_bottleneck": "bottleneck",
}


@dataclass(frozen=True)
class Setting:
    """One value of the recipe and where it came from: ``recipe`` (derived here) or ``config`` (set, kept)."""

    value: Any
    source: str


@dataclass(frozen=True)
class Recipe:
    """What :func:`derive` settled, with the inputs it used (``run_info.json``'s ``recipe``)."""

    name: str
    strategy: str
    train_rows: int
    num_labels: int
    steps_per_epoch: int
    target_steps: int | None
    max_epochs: Setting
    lr: Setting
    head_lr: Setting

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``recipe/<key>`` values for the loggers' hyper-parameters."""
        flat: dict[str, Any] = {}
        for key, value in self.record().items():
            if isinstance(value, dict):
                flat[f"recipe/{key}"] = value["value"]
                flat[f"recipe/{key}_source"] = value["source"]
            else:
                flat[f"recipe/{key}"] = value
        return flat

    def describe(self) -> str:
        parts = [
            f"recipe={self.name} ({self.strategy}, {self.train_rows:,} train rows, {self.num_labels} labels, "
            f"{self.steps_per_epoch} steps/epoch)"
        ]
        for key in ("max_epochs", "lr", "head_lr"):
            setting = getattr(self, key)
            shown = "the lr" if setting.value is None else setting.value
            parts.append(f"{key}={shown} ({'set' if setting.source == 'config' else 'derived'})")
        if self.target_steps is not None:
            parts.append(f"budget {self.target_steps} steps")
        return ", ".join(parts)


def strategy_of(adapter: DictConfig) -> str | None:
    """The adapter group's option (``full``, ``lora``, ...) from the adapter node's ``_target_`` (None: a target
    of the user's own, which the recipe has no rate for)."""
    return ADAPTER_OPTIONS.get(str(adapter._target_).rsplit(".", 1)[-1])  # every adapter schema has a _target_


def check(cfg: DictConfig) -> None:
    """Refuse, before anything heavy loads, a null ``optimizer.lr`` the recipe has no rate for."""
    if cfg.optimizer.lr is not None or cfg.model.kind == "baseline":
        return
    strategy = strategy_of(cfg.adapter)
    if strategy is None:
        raise ConfigError(
            f"optimizer.lr=null: recipe={cfg.recipe.name} picks the lr of a known adapter "
            f"({', '.join(sorted(cfg.recipe.lr))}), not of adapter._target_={cfg.adapter._target_}; set optimizer.lr"
        )
    if strategy not in cfg.recipe.lr:
        raise ConfigError(
            f"optimizer.lr=null: recipe.lr has no rate for adapter={strategy}; set optimizer.lr or recipe.lr.{strategy}"
        )


def steps_per_epoch(train_rows: int, batch_size: int, accumulate: int, world_size: int) -> int:
    """Optimizer steps in one pass over ``train_rows`` (every rank takes its own batches)."""
    batches = math.ceil(train_rows / (batch_size * world_size))
    return max(1, math.ceil(batches / max(1, accumulate)))


def epochs_for(steps: int, per_epoch: int, low: int, high: int) -> int:
    """Epochs that reach ``steps`` optimizer steps at ``per_epoch`` a pass, within ``[low, high]``."""
    return min(high, max(low, math.ceil(steps / per_epoch)))


def world_size(trainer: DictConfig) -> int:
    """Processes that split each epoch: ``devices x num_nodes`` when devices is a count (``auto``/-1: 1, a guess
    that makes the budget longer, never shorter, on a multi-GPU machine)."""
    devices = trainer.devices
    return (devices if isinstance(devices, int) and devices > 0 else 1) * int(trainer.num_nodes)


def derive(cfg: DictConfig, train_rows: int, num_labels: int) -> Recipe:
    """The recipe of ``cfg`` for a train split of ``train_rows`` rows and ``num_labels`` labels (nothing changed)."""
    rules = cfg.recipe
    strategy = strategy_of(cfg.adapter) or "custom"
    accumulate = int(cfg.trainer.accumulate_grad_batches)
    per_epoch = steps_per_epoch(train_rows, int(cfg.data.batch_size), accumulate, world_size(cfg.trainer))
    target_steps = None
    if cfg.trainer.max_epochs is None:
        target_steps = max(int(rules.steps_floor), int(rules.steps_per_class) * num_labels)
        epochs = Setting(epochs_for(target_steps, per_epoch, int(rules.min_epochs), int(rules.max_epochs)), "recipe")
    else:
        epochs = Setting(int(cfg.trainer.max_epochs), "config")
    if cfg.optimizer.lr is None:  # check() refused the strategies recipe.lr does not know
        lr = Setting(float(rules.lr[strategy]), "recipe")
    else:
        lr = Setting(float(cfg.optimizer.lr), "config")
    if cfg.optimizer.head_lr is not None:
        head_lr = Setting(float(cfg.optimizer.head_lr), "config")
    elif rules.head_lr is not None and num_labels >= int(rules.many_classes):
        head_lr = Setting(max(float(rules.head_lr), lr.value), "recipe")
    else:
        head_lr = Setting(None, "recipe")  # the head learns at the lr
    return Recipe(
        name=str(rules.name),
        strategy=strategy,
        train_rows=train_rows,
        num_labels=num_labels,
        steps_per_epoch=per_epoch,
        target_steps=target_steps,
        max_epochs=epochs,
        lr=lr,
        head_lr=head_lr,
    )


def apply(cfg: DictConfig, recipe: Recipe) -> None:
    """Write the recipe's values into ``cfg`` (in place): from here on the run reads plain numbers."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = recipe.max_epochs.value
        cfg.optimizer.lr = recipe.lr.value
        cfg.optimizer.head_lr = recipe.head_lr.value


def settle(cfg: DictConfig, datamodule: Any) -> Recipe:
    """:func:`derive` for a prepared datamodule's train split, then :func:`apply`: every builder that follows
    (model, module, trainer; a federation's nodes) reads numbers. A config already settled stays as it is."""
    settled = derive(cfg, len(datamodule.datasets["train"]), datamodule.num_labels)
    apply(cfg, settled)
    return settled
