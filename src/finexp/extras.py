"""finexp's optional stacks (``pip install 'finexp[<extra>]'``), and the one message a run gets when one is missing.

The extras are declared in ``pyproject.toml``; ``finexp[dev]`` installs every one of them, so CI tests everything.
"""

from __future__ import annotations

import importlib.util

from finexp import FinexpError

# extra -> the import names it provides (what the code imports; pyproject.toml names the distributions)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "pydantic", "starlette"),
    "privacy": ("opacus",),
    "explain": ("captum",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "federated": ("flwr",),
    "qlora": ("bitsandbytes",),
    "hf": ("datasets",),
}


class MissingExtraError(FinexpError):
    """A feature whose optional stack is not installed."""


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str, feature: str) -> None:
    """Stop with ``<feature> needs <packages>, which are not installed: pip install 'finexp[<extra>]'`` unless every
    package of ``extra`` is installed (call it before importing them)."""
    absent = missing(extra)
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        raise MissingExtraError(
            f"{feature} needs {', '.join(absent)}, which {verb} not installed: pip install 'finexp[{extra}]'"
        )
