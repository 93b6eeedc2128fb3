"""Sharded training strategies set up from the model (``trainer=fsdp``, ``trainer=deepspeed``).

FSDP shards a model by wrapping blocks of it; the right blocks are the model's transformer layers
(``LlamaDecoderLayer``, ``BertLayer`` ...), which transformers lists for every architecture as
``_no_split_modules``. :func:`fsdp` builds Lightning's ``FSDPStrategy`` with a policy that reads those names from the
model when FSDP wraps it, so one config serves every model, and with ``use_orig_params=True``, which lets frozen
and trainable parameters (LoRA, top layers) share a wrapped block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from finexp import FinexpError

SHARDED = (FSDPStrategy, DeepSpeedStrategy)


def layer_names(root: nn.Module) -> set[str]:
    """The class names every transformers model inside ``root`` declares as its unsplittable blocks."""
    names: set[str] = set()
    for module in root.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def layer_classes(root: nn.Module, names: Sequence[str] = ()) -> set[type[nn.Module]]:
    """The classes of ``root``'s modules named ``names`` (default: :func:`layer_names`).

    Raises:
        FinexpError: no module of ``root`` has one of those names.
    """
    wanted = set(names) or layer_names(root)
    classes = {type(module) for module in root.modules() if type(module).__name__ in wanted}
    if not classes:
        found = sorted(wanted) or "none"
        raise FinexpError(
            f"trainer=fsdp: no layer of the model to wrap (layer classes looked for: {found}); name them with "
            "trainer.strategy.auto_wrap=[ClassName, ...] (e.g. [LlamaDecoderLayer])"
        )
    return classes


class LayerWrapPolicy(ModuleWrapPolicy):
    """FSDP auto-wrap policy: one FSDP unit per transformer layer of the model being wrapped.

    Args:
        names: class names to wrap; empty: the model's ``_no_split_modules`` (resolved when FSDP wraps the model).
    """

    def __init__(self, names: Sequence[str] = ()) -> None:
        super().__init__(())
        self.names = tuple(names)

    def _run_policy(
        self, root_module: nn.Module, ignored_modules: set[nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[nn.Module, dict[str, Any]]:
        self._module_classes = layer_classes(root_module, self.names)
        self._module_classes_str = str(sorted(c.__name__ for c in self._module_classes))
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


def fsdp(auto_wrap: str | Sequence[str] | None = "layers", use_orig_params: bool = True, **kwargs: Any) -> FSDPStrategy:
    """Lightning's ``FSDPStrategy`` wrapping the model's layers (``conf/trainer/fsdp.yaml``).

    Args:
        auto_wrap: ``layers`` (each transformer layer its own FSDP unit, found from the model), a list of class
            names, or null (the whole model one unit: no memory saved beyond the optimizer state).
        use_orig_params: keep the original parameters visible, needed when some train and some are frozen.
        kwargs: the other ``FSDPStrategy`` arguments (sharding_strategy, cpu_offload, state_dict_type ...).
    """
    if auto_wrap == "layers":
        policy = LayerWrapPolicy()
    elif auto_wrap is None:
        policy = None
    elif isinstance(auto_wrap, str):
        raise FinexpError(f"trainer.strategy.auto_wrap={auto_wrap!r}: give layers, a list of class names, or null")
    else:
        policy = LayerWrapPolicy(list(auto_wrap))
    return FSDPStrategy(auto_wrap_policy=policy, use_orig_params=use_orig_params, **kwargs)


def is_sharded(strategy: Strategy | None) -> bool:
    """Whether ``strategy`` shards parameters across processes (FSDP, DeepSpeed)."""
    return isinstance(strategy, SHARDED)
