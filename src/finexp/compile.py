"""``trainer.compile=true``: ``torch.compile`` of the model's encoder, and the Trainer that accepts the switch.

The encoder (the transformer every problem type's model holds as ``.encoder``) is compiled in place
(``nn.Module.compile``): parameter names, checkpoints, exports and adapters see the same module as without it, and
the first training and validation steps pay the compilation (inductor needs a C++ compiler on CPU). Heads, pooling
and losses stay eager: they are small, and problem types differ there. Off by default: it pays on GPUs with long
runs, rarely on a CPU or in a short run (``scripts/bench_compile.py`` measures both).

``conf/trainer`` builds :class:`Trainer`, Lightning's Trainer with one more argument, ``compile``, so the switch
lives beside the other trainer settings and a misspelt trainer key is still refused before anything loads.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytorch_lightning as pl
from torch import nn

log = logging.getLogger("finexp")


class Trainer(pl.Trainer):
    """``pytorch_lightning.Trainer`` plus ``compile`` (read by ``finexp-train``, which compiles the encoder with
    :func:`compile_encoder` before fitting; the Trainer itself only records it as :attr:`compile_encoder`)."""

    def __init__(self, *args: Any, compile: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.compile_encoder = bool(compile)


# The signature finexp's argument checks read (finexp.targets.check_arguments): Lightning's arguments and `compile`.
_LIGHTNING = inspect.signature(pl.Trainer.__init__)
Trainer.__init__.__signature__ = _LIGHTNING.replace(  # type: ignore[attr-defined]
    parameters=[
        *_LIGHTNING.parameters.values(),
        inspect.Parameter("compile", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    ]
)


def compile_encoder(model: nn.Module, **options: Any) -> str:
    """Compile ``model.encoder`` in place (the whole model when it has no ``encoder``); returns what was compiled.

    Args:
        model: a finexp model (``SequenceClassifier``, ``TokenClassifier``, ``CausalLM``, ...).
        **options: ``torch.compile`` options (``mode``, ``dynamic``, ``backend``).
    """
    target, name = (
        (model.encoder, "encoder") if isinstance(getattr(model, "encoder", None), nn.Module) else (model, "model")
    )
    target.compile(**options)
    log.info("trainer.compile=true: the %s (%s) is compiled on its first steps", name, type(target).__name__)
    return name
