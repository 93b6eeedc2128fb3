"""The config reads that may find a key absent, and what an absent key means.

Every key of a finexp group is in a schema (:mod:`finexp.config.schema`): it is always there, attribute access
suffices, and a misspelt key fails instead of reading a default. Two kinds of node are not finexp's to type:

- ``trainer`` is Lightning's ``Trainer`` keyword arguments, passed through as written, so a hand-written config (or
  one saved before a key existed) may leave a key out: :func:`trainer_setting` reads it, and an absent key means what
  :data:`TRAINER_DEFAULTS` says (Lightning's own default, except where noted);
- a ``_target_`` (what a node builds) is absent from a node that builds nothing: :func:`target_of`.

Plain Python (no OmegaConf import): ``DictConfig`` is a ``Mapping``, so both accept a saved config read as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What an absent ``trainer.<key>`` means, for the keys finexp reads itself. Asking for any other key is an error, so
# a typo in finexp's code cannot silently read a default.
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "strategy": "auto",
    "devices": 1,  # conf/trainer/auto.yaml's: one process (Lightning's own default, "auto", takes every device)
    "num_nodes": 1,
    "precision": "32-true",
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "deterministic": False,  # Lightning's None leaves torch's setting alone; finexp's extra stages pass False
    "enable_progress_bar": True,  # Lightning's None means on
    "default_root_dir": None,  # Lightning: the working directory
    "compile": False,  # finexp.compile.Trainer's own key: torch.compile the encoder
}


def trainer_setting(trainer: Mapping[str, Any], key: str) -> Any:
    """``trainer.<key>``, or what its absence means to Lightning (:data:`TRAINER_DEFAULTS`).

    Args:
        trainer: the run's ``trainer`` node (Lightning's ``Trainer`` kwargs).
        key: one of :data:`TRAINER_DEFAULTS`' keys.

    Raises:
        KeyError: ``key`` is not a setting finexp reads (a typo in the caller).
    """
    if key not in TRAINER_DEFAULTS:
        raise KeyError(f"trainer.{key} is not a trainer setting finexp reads ({', '.join(TRAINER_DEFAULTS)})")
    # Lightning's kwargs are untyped (no schema fills them in): an absent key is Lightning's default, from the table
    return trainer.get(key, TRAINER_DEFAULTS[key])


def target_of(node: Any) -> str:
    """The ``_target_`` a config node builds (``finexp.adapters.peft_methods.build_lora``); ``""`` when it builds
    nothing: no node, a plain value (``trainer.strategy: auto``), or a hand-written config whose node names no
    builder (a report of predictions made elsewhere)."""
    if not isinstance(node, Mapping):
        return ""
    # a node without a builder is legitimate (see above); every finexp group schema that builds has a _target_
    return str(node.get("_target_", ""))
