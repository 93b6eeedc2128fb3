"""Which ``_target_`` callables a finexp config may name: saved configs are data, never code.

A run directory's ``config.yaml`` is something people copy, share and download; ``finexp-eval``, ``-predict``,
``-serve``, ``-export`` and ``-explain`` rebuild a model from it. Hydra would call whatever ``_target_`` a config
names (``builtins.open``, ``os.system``, ``torch.load`` ...), so every config, the one a run composes and the one it
reads back, is checked against this allow-list before anything runs:

- the finexp builders and classes that ``conf/`` names (:data:`FINEXP_TARGETS`, exact names);
- classes of a few library families (:data:`CLASS_FAMILIES`): optimizers and schedulers of ``torch.optim``,
  Lightning's ``Trainer``, callbacks, loggers and strategies, Flower's strategies. A name in a family must resolve to
  a class deriving from the family's base (checked when it is instantiated), so ``torch.optim.sgd.torch.load`` is
  refused although it starts like an optimizer.

Your own callables (a custom callback, a Flower strategy of yours) are trusted through the environment, which no
run directory carries: ``FINEXP_TRUSTED_TARGETS="mypkg.callbacks.MyCallback,mypkg.strategies."`` (a trailing dot
trusts a whole module). This module imports nothing heavy, so configs are checked before torch loads.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import ListConfig

from finexp import FinexpError

TRUST_ENV = "FINEXP_TRUSTED_TARGETS"

# Every `_target_` the shipped config tree and the schemas name (tests/test_targets.py keeps this in step with conf/).
FINEXP_TARGETS = frozenset(
    {
        "finexp.adapters.train_everything",
        "finexp.adapters.freeze_encoder",
        "finexp.adapters.strategies.train_top_layers",
        "finexp.adapters.peft_methods.build_lora",
        "finexp.adapters.peft_methods.build_ia3",
        "finexp.adapters.peft_methods.build_prompt_tuning",
        "finexp.adapters.peft_methods.build_prefix_tuning",
        "finexp.adapters.bottleneck.build_bottleneck",
        "finexp.adapters.checkpoint.TrainableOnlyCheckpoint",
        "finexp.baselines.ColumnLogReg",
        "finexp.baselines.GradientBoosting",
        "finexp.baselines.TfidfLogReg",
        "finexp.callbacks.BestAndLastCheckpoint",
        "finexp.callbacks.RunCosts",
        "finexp.compile.Trainer",
        "finexp.loggers.CSVLogger",
        "finexp.loggers.MLFlowLogger",
        "finexp.loggers.WandbLogger",
        "finexp.optim.adamw",
        "finexp.optim.sgd",
        "finexp.optim.constant",
        "finexp.optim.cosine",
        "finexp.optim.linear_warmup",
        "finexp.resume.RNGStateCheckpoint",
        "finexp.run_records.RunRecords",
        "finexp.averaging.EpochWeightAveraging",
        "finexp.strategies.fsdp",
        "finexp.multirun.MultirunSummary",  # a Hydra callback (conf/hydra), never in a saved config
    }
)

# prefix -> (module, class) of the base every target under the prefix must derive from
CLASS_FAMILIES: dict[str, tuple[str, str]] = {
    "torch.optim.lr_scheduler.": ("torch.optim.lr_scheduler", "LRScheduler"),
    "torch.optim.": ("torch.optim", "Optimizer"),
    "pytorch_lightning.Trainer": ("pytorch_lightning", "Trainer"),
    "pytorch_lightning.callbacks.": ("pytorch_lightning", "Callback"),
    "pytorch_lightning.loggers.": ("pytorch_lightning.loggers", "Logger"),
    "pytorch_lightning.strategies.": ("pytorch_lightning.strategies", "Strategy"),
    "lightning.pytorch.Trainer": ("lightning.pytorch", "Trainer"),
    "lightning.pytorch.callbacks.": ("lightning.pytorch", "Callback"),
    "lightning.pytorch.loggers.": ("lightning.pytorch.loggers", "Logger"),
    "lightning.pytorch.strategies.": ("lightning.pytorch.strategies", "Strategy"),
    "flwr.server.strategy.": ("flwr.server.strategy", "Strategy"),
    "flwr.serverapp.strategy.": ("flwr.serverapp.strategy", "Strategy"),
}


class UntrustedTargetError(FinexpError):
    """A config names a ``_target_`` that finexp does not call."""


def _trusted_by_user() -> list[str]:
    return [name.strip() for name in os.environ.get(TRUST_ENV, "").split(",") if name.strip()]


def _user_trusts(target: str) -> bool:
    return any(target == name or (name.endswith(".") and target.startswith(name)) for name in _trusted_by_user())


def _family(target: str) -> tuple[str, str] | None:
    for prefix, base in CLASS_FAMILIES.items():
        if target == prefix or (prefix.endswith(".") and target.startswith(prefix)):
            return base
    return None


def _refuse(key: str, target: Any, source: str, why: str) -> UntrustedTargetError:
    return UntrustedTargetError(
        f"{source}: {key}._target_={target!r} is refused ({why}); finexp calls only its own builders and "
        f"{', '.join(p.rstrip('.') for p in CLASS_FAMILIES)} classes. To trust a callable of your own, set "
        f"{TRUST_ENV}=<dotted.name> in the environment"
    )


def check_target(target: Any, key: str, source: str) -> None:
    """Refuse ``target`` unless it is allowed (see the module docstring); names only, nothing is imported.

    Raises:
        UntrustedTargetError: naming ``source`` (a file or "the config"), the key and the target.
    """
    if not isinstance(target, str) or not target:
        raise _refuse(key, target, source, "not a dotted name")
    if any(part.startswith("_") for part in target.split(".")):
        raise _refuse(key, target, source, "private or dunder names are never called")
    if target in FINEXP_TARGETS or _family(target) is not None or _user_trusts(target):
        return
    raise _refuse(key, target, source, "not on the allow-list")


def iter_targets(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, target)`` of every ``_target_`` in a plain (or OmegaConf) tree, however deeply nested."""
    if hasattr(node, "items"):
        for name, value in node.items():
            dotted = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                yield key or "<root>", value
            else:
                yield from iter_targets(value, dotted)
    elif isinstance(node, list | tuple | ListConfig):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{key}[{i}]")


def check_targets(tree: Any, source: str) -> None:
    """Check every ``_target_`` in ``tree`` (a config as plain containers or unresolved OmegaConf)."""
    for key, target in iter_targets(tree):
        check_target(target, key, source)


def _resolve(target: str) -> Any:
    """Import ``a.b.C`` as module ``a.b`` (or ``a``) and walk the attributes (what Hydra's locate does)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def verify_class_family(target: str, key: str, source: str) -> None:
    """At instantiation: a family target must be a class deriving from the family's base."""
    base_ref = _family(target)
    if base_ref is None or target in FINEXP_TARGETS or _user_trusts(target):
        return
    try:
        obj = _resolve(target)
        base = getattr(importlib.import_module(base_ref[0]), base_ref[1])
    except (ImportError, AttributeError) as err:
        raise _refuse(key, target, source, f"cannot be imported: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise _refuse(key, target, source, f"not a subclass of {base_ref[0]}.{base_ref[1]}")


def instantiate(node: Any, source: str = "the config", **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` after every ``_target_`` in ``node`` is checked (``_convert_="all"``)."""
    from hydra.utils import instantiate as hydra_instantiate

    for key, target in iter_targets(node):
        check_target(target, key, source)
        verify_class_family(target, key, source)
    return hydra_instantiate(node, _convert_="all", **kwargs)


def check_arguments(node: Any, key: str) -> None:
    """Refuse keys of ``node`` that its ``_target_`` does not accept (``+optimizer.lrr=1``), before anything runs.

    Hydra would only find out when the object is built, after the data and the model have loaded (or, for a partial
    like the optimizer, inside ``fit``). Targets taking ``**kwargs`` accept anything and are not checked.

    Raises:
        FinexpError: naming the key, the target and the arguments it takes.
    """
    import inspect

    if not hasattr(node, "items") or "_target_" not in node:
        return
    target = node["_target_"]
    try:
        obj = _resolve(str(target))
        signature = inspect.signature(obj)
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # unresolvable targets are instantiate's to report; builtins without signatures are not checked
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    unknown = [name for name in node if not str(name).startswith("_") and name not in accepted]
    if unknown:
        raise FinexpError(
            f"{key}.{unknown[0]} is not an argument of {target} (it takes: {', '.join(sorted(accepted))}); "
            f"remove it or fix the spelling"
        )
