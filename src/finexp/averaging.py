"""Cheap ensembles in one model: the mean of the weights of the last ``k`` training epochs (``callbacks=averaged``).

At the end of each training epoch (its last batch, before that epoch's validation) the trainable parameters are
snapshotted; validation, the checkpoints (``best.ckpt``, ``last.ckpt``) and the model after ``fit`` use the mean of
the last ``last_k`` snapshots, so the checkpoint finexp-eval reads holds the averaged weights. Frozen parameters never
change, so averaging the trainable ones is the average of the whole model: with LoRA that is the adapter and the head,
and the trainable-only checkpoints (``finexp.adapters.checkpoint``) stay trainable-only. The current (not averaged)
weights and the snapshots travel in the callback's checkpoint state, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """State-dict names of the parameters that train (each shared parameter under every name it has)."""
    state = module.state_dict(keep_vars=True)
    return {name: value for name, value in state.items() if isinstance(value, nn.Parameter) and value.requires_grad}


class EpochWeightAveraging(pl.Callback):
    """Average the trainable weights of the last ``last_k`` epochs (a uniform SWA over a sliding window).

    Args:
        last_k: epochs averaged (the most recent ones); 1 is plain training. More: smoother weights, a model further
            from any one epoch's; each snapshot costs one copy of the trainable parameters (on the CPU).
        enabled: false keeps the callback in the list but off.
    """

    def __init__(self, last_k: int = 3, enabled: bool = True) -> None:
        if last_k < 1:
            raise ValueError(f"callbacks.weight_averaging.last_k={last_k}: must be >= 1")
        self.last_k = last_k
        self.enabled = enabled
        self.snapshots: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=last_k)
        self._current: dict[str, torch.Tensor] | None = None  # the trained weights while the average is swapped in
        self._module: nn.Module | None = None

    @property
    def run_records(self) -> dict[str, Any]:
        """What run_info.json says (finexp.run_records.RunRecords)."""
        if not self.enabled:
            return {}
        return {
            "weight_averaging": {
                "method": f"mean of the trainable weights at the end of the last {self.last_k} epoch(s)",
                "last_k": self.last_k,
                "applies_to": "validation, every checkpoint (best.ckpt, last.ckpt) and the model after fit",
            }
        }

    # ------------------------------------------------------------------------------------------------------------
    def average(self) -> dict[str, torch.Tensor]:
        """The mean of the snapshots kept (float64 sums, cast back to each parameter's dtype)."""
        names = self.snapshots[0][1]
        return {
            name: (sum(snap[name].double() for _, snap in self.snapshots) / len(self.snapshots)).to(value.dtype)
            for name, value in names.items()
        }

    def _snapshot(self, pl_module: pl.LightningModule, epoch: int) -> None:
        weights = {n: p.detach().to("cpu", copy=True) for n, p in trainable_parameters(pl_module).items()}
        self.snapshots.append((epoch, weights))

    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if self._current is not None or not self.snapshots:
            return
        params = trainable_parameters(pl_module)
        self._current = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, value in self.average().items():
                params[name].copy_(value)

    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        if self._current is None:
            return
        params = trainable_parameters(pl_module)
        with torch.no_grad():
            for name, value in self._current.items():
                params[name].copy_(value)
        self._current = None

    # ------------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.enabled and batch_idx + 1 == trainer.num_training_batches:  # the epoch's weights, before validation
            self._snapshot(pl_module, trainer.current_epoch)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and self.snapshots:  # the model after fit is the averaged one
            self._swap_out(pl_module)
            with torch.no_grad():
                params = trainable_parameters(pl_module)
                for name, value in self.average().items():
                    params[name].copy_(value)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """The checkpoint's weights are the average; the trained ones and the snapshots go in the callback state."""
        if not self.enabled or not self.snapshots or trainer.state.fn != "fit":
            return
        state = checkpoint["state_dict"]
        for name, value in self.average().items():
            if name in state:
                state[name] = value.to(state[name].device)

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        current = self._current  # the trained weights: swapped out while the average is in the module
        if current is None and self._module is not None:
            current = {n: p.detach().to("cpu", copy=True) for n, p in trainable_parameters(self._module).items()}
        return {
            "last_k": self.last_k,
            "epochs": [epoch for epoch, _ in self.snapshots],
            "snapshots": [weights for _, weights in self.snapshots],
            "current": current,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Resume: the snapshots come back, and the model continues from the trained (not averaged) weights."""
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not self.enabled or not state or trainer.state.fn != "fit":  # validate/test read the average as saved
            return
        self.snapshots = deque(zip(state["epochs"], state["snapshots"], strict=True), maxlen=self.last_k)
        trained = state["current"]
        if trained:
            params = trainable_parameters(pl_module)
            with torch.no_grad():
                for name, value in trained.items():
                    params[name].copy_(value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # restored in on_load_checkpoint, which also sees the module
