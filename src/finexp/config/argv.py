"""Command-line rewrites the entry points apply before Hydra parses ``sys.argv`` (nothing heavy imported)."""

from __future__ import annotations


def ensemble_argv(argv: list[str]) -> list[str]:
    """``ckpt=a,b,c`` -> ``ckpt=[a,b,c]``: without -m, Hydra refuses a bare comma-separated value as ambiguous
    (finexp-predict and finexp-serve take several checkpoints as an ensemble)."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "ckpt" and sep and "," in value and value[:1] not in "[\"'":
            arg = f"ckpt=[{value}]"
        out.append(arg)
    return out
