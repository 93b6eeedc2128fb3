"""Parameter-efficient checkpoints: save what trains, rebuild the frozen rest from the model's own weights.

A LoRA run's checkpoint then holds the LoRA matrices and the head (and the optimizer state for just those), not a
copy of the frozen encoder. Loading rebuilds the model from the run's config (pretrained weights, or the same seeded
initialisation) and loads the saved part; every key left out must be one the checkpoint declared as frozen.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn

from finexp import FinexpError
from finexp.strategies import is_sharded

KEY = "finexp_frozen"  # checkpoint entry listing the state-dict keys that were left out (frozen weights)


def rebuildable(module: nn.Module) -> bool:
    """Whether the frozen weights can be rebuilt from files: the encoder was loaded from pretrained weights.

    An encoder built from ``model.architecture`` (random initialisation) cannot be, so its runs keep full checkpoints.
    """
    model = getattr(module, "model", module)
    config = getattr(getattr(model, "encoder", None), "config", None)
    return bool(getattr(config, "name_or_path", ""))


def frozen_keys(module: nn.Module) -> list[str]:
    """State-dict keys of parameters that do not train (buffers are kept: they are small and may be updated).

    Read from the state dict, not ``named_parameters``: a shared parameter appears there under every name (peft's
    prompt methods keep the word embeddings under a second name), and each copy would otherwise be saved.
    """
    state = module.state_dict(keep_vars=True)
    return [name for name, value in state.items() if isinstance(value, nn.Parameter) and not value.requires_grad]


class TrainableOnlyCheckpoint(pl.Callback):
    """Drop frozen parameters from every checkpoint Lightning writes when some parameters are frozen.

    Full fine-tuning is untouched (nothing is frozen), and so are encoders built from ``model.architecture`` (their
    random frozen weights exist in no file; see :func:`rebuildable`). Restoring such a checkpoint (resume,
    ``trainer.test(ckpt_path=...)``) loads non-strictly and then checks that exactly the declared frozen keys were
    missing.

    Args:
        enabled: false keeps full checkpoints (e.g. to hand the whole model to a tool that expects one).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def _active(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        # FSDP / DeepSpeed gather one full state dict on rank 0; which of its keys were frozen is not visible from a
        # wrapped module's names on every rank, so sharded runs keep full checkpoints (what finexp-eval reads).
        sharded = is_sharded(trainer.strategy)
        return self.enabled and not sharded and rebuildable(pl_module) and bool(frozen_keys(pl_module))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._active(trainer, pl_module):
            pl_module.strict_loading = False  # verified in on_load_checkpoint

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if not self._active(trainer, pl_module):
            return
        frozen = frozen_keys(pl_module)
        if frozen:
            state = checkpoint["state_dict"]
            for key in frozen:
                state.pop(key, None)
            checkpoint[KEY] = frozen

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        check_keys(pl_module, checkpoint)


def check_keys(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Raise unless the checkpoint's state dict plus its declared frozen keys are exactly the module's keys."""
    expected = set(module.state_dict())
    saved = set(checkpoint["state_dict"])
    declared = set(checkpoint.get(KEY, []))
    missing = expected - saved - declared
    unexpected = saved - expected
    if missing or unexpected or (declared - expected):
        raise FinexpError(
            "checkpoint does not match the model rebuilt from its config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}, "
            f"declared frozen but unknown {sorted(declared - expected)[:5]}"
        )


def load_checkpoint_state(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Load a finexp checkpoint into ``module`` (rebuilt from the run's config), full or trainable-only."""
    check_keys(module, checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=KEY not in checkpoint)
