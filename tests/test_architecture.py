"""Two of issue 16's limits on src/finexp, read with ``ast`` (nothing imported): no module over 600 lines, and at
most 10 config lookups that fall back on a default (``node.get("key", default)``, ``OmegaConf.select(...,
default=...)``), each with a comment saying why.

A key of a finexp group is in a schema, so it is always there: attribute access reads it, and a misspelt key fails
instead of silently reading a default. What is left are the nodes finexp cannot type (``trainer``: Lightning's
kwargs, read through :func:`finexp.config.trainer_setting`; a node's ``_target_``: :func:`finexp.config.target_of`)
and configs read as data that may be missing (a half-written run directory).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from import_walk import ROOT, SRC, module_names

MAX_LINES = 600
MAX_DEFAULTED_LOOKUPS = 10
# A call's receiver is a config when a name in it is one of these (``cfg.trainer``, ``run.config``, ``fed``, ...);
# run_info.json, metrics, checkpoints, Flower's messages and the like are data, not configs, and go uncounted.
CONFIG_NAMES = frozenset(
    {"cfg", "config", "conf", "trainer", "fed", "federated", "adapter", "optimizer", "scheduler", "strategy"}
    | {"sweep", "sweeper", "node", "task", "data", "model", "method", "privacy", "wandb", "hydra"}
)
KEY = re.compile(r"[a-z_]+")  # config keys; Flower's record keys (server-round, finexp-run-dir) are hyphenated


@dataclass(frozen=True)
class Lookup:
    path: str
    line: int
    text: str
    explained: bool


def _names(node: ast.AST) -> set[str]:
    found = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Name):
            found.add(part.id)
        elif isinstance(part, ast.Attribute):
            found.add(part.attr)
    return found


def _is_defaulted_lookup(call: ast.Call) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "select":  # OmegaConf.select: only ever on a config
        return any(k.arg == "default" for k in call.keywords)
    if func.attr != "get" or len(call.args) != 2:
        return False
    key = call.args[0]
    if isinstance(key, ast.Constant) and not (isinstance(key.value, str) and KEY.fullmatch(key.value)):
        return False  # not a config key
    return bool(_names(func.value) & CONFIG_NAMES)  # a literal key, or one computed (``trainer.get(key, ...)``)


def defaulted_lookups(src: Path = SRC, root: str = ROOT) -> list[Lookup]:
    """Every config lookup with a default under ``src/root``, and whether a comment explains it (a ``#`` on one of
    the call's lines or on the line above)."""
    found = []
    for path in module_names(src, root).values():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        commented = {token.start[0] for token in tokens if token.type == tokenize.COMMENT}
        for call in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(call, ast.Call) and _is_defaulted_lookup(call):
                start, end = call.lineno, call.end_lineno or call.lineno
                explained = bool(commented & set(range(start - 1, end + 1)))
                found.append(Lookup(str(path.relative_to(src)), start, lines[start - 1].strip(), explained))
    return sorted(found, key=lambda lookup: (lookup.path, lookup.line))


def _listing(lookups: list[Lookup]) -> str:
    return "\n".join(f"  {x.path}:{x.line}: {x.text}" for x in lookups)


def test_config_lookups_with_a_default_are_few_and_each_says_why():
    lookups = defaulted_lookups()
    assert lookups, "the walk found none: it no longer sees src/finexp"
    assert len(lookups) <= MAX_DEFAULTED_LOOKUPS, (
        f"{len(lookups)} config lookups fall back on a default (at most {MAX_DEFAULTED_LOOKUPS}): give the key a "
        "default in its schema (finexp.config.schema) and read it as an attribute, or read trainer keys with "
        "finexp.config.trainer_setting and _target_ with finexp.config.target_of:\n" + _listing(lookups)
    )
    silent = [x for x in lookups if not x.explained]
    assert not silent, "say why each of these may find its key absent (a comment on or above it):\n" + _listing(silent)


def test_no_module_is_over_600_lines():
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in module_names().values()}
    assert len(sizes) > 50  # the walk found the package
    long = [f"  {path.relative_to(SRC)}: {n}" for path, n in sorted(sizes.items()) if n > MAX_LINES]
    why = f"modules over {MAX_LINES} lines (split each into modules named for what they hold):"
    assert not long, "\n".join([why, *long])


def _package(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "m.py").write_text(text)
    return tmp_path


def test_the_count_sees_config_lookups_and_their_comments_only(tmp_path):
    src = _package(
        tmp_path,
        "\n".join(
            [
                'a = cfg.trainer.get("precision", "32-true")',  # counted, unexplained
                "# an old run may lack it",
                'b = run.config.get("seed", 0)',  # counted, explained above
                'c = OmegaConf.select(cfg, "x", default=None)  # why',  # counted, explained
                'd = info.get("seed", 0)',  # run_info.json: data
                'e = message.config.get("server-round", 1)',  # Flower's record key
                'f = cfg.trainer.get("precision")',  # no default
                'g = os.environ.get("HOME", "")',  # not a config
                "i = trainer.get(key, DEFAULTS[key])  # Lightning's",  # counted: a key computed, explained
                "h = (",
                '    adapter.get("_target_", "")',  # counted, over two lines, unexplained
                ")",
            ]
        )
        + "\n",
    )
    lookups = defaulted_lookups(src, "pkg")
    assert [(x.line, x.explained) for x in lookups] == [(1, False), (3, True), (4, True), (9, True), (11, False)]
