"""Business rules applied after the model: declarative conditions over a row's input columns.

    rules = RuleSet.from_specs(
        [{"name": "debt_to_income", "when": "Debt / Income > 0.6", "decision": "decline"},
         {"name": "arrears", "when": "Records == 'yes'", "decision": "refer"}],
        decisions={"good": "approve", "bad": "decline"},
    )
    rules.decide([{"Debt": 900, "Income": 1000, "Records": "no"}], ["good"])
    # -> [Decision(model_decision="approve", rule="debt_to_income", final_decision="decline")]

Conditions are parsed with Python's ``ast`` and only a whitelist of node types is accepted: column names (or
```any column name```), numbers, quoted text, ``True``/``False``, ``+ - * / %``, comparisons (chained too),
``and``/``or``/``not``, ``in [..]`` / ``not in [..]`` and the functions ``missing(x)``, ``abs``, ``min``, ``max``.
Nothing is ever passed to ``eval``: the accepted tree is compiled into plain Python closures. Attribute access,
subscripts, other calls, lambdas and comprehensions are refused with an error naming the rule.

Missing values (None, NaN, a column left empty) make arithmetic missing and every comparison false, so a rule on a
missing value does not fire; test for them with ``missing(Income)``. Division by zero is missing as well. Rules are
evaluated in order and the first that matches decides (put the strictest first).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

from finexp import FinexpError

MAX_CONDITION_DEPTH = 64  # AST levels; a policy rule is a handful deep
MAX_CONDITION_CHARS = 1000  # ast.parse recurses: an absurdly long condition is refused before parsing
_BACKTICKED = re.compile(r"`([^`]+)`")


class RuleError(FinexpError):
    """A rule that cannot be parsed, refers to an unknown column, or fails on a row."""


@dataclass(frozen=True)
class Decision:
    """What the model decided for a row, the rule that overrode it (None: none did), and the final decision;
    ``error`` when a rule could not be evaluated on the row (then nothing is decided)."""

    model_decision: str | None
    rule: str | None
    final_decision: str | None
    error: str | None = None


Evaluator = Callable[[Mapping[str, Any]], Any]
_MISSING = None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: object) -> object:
    """Numbers stay; numeric strings (a JSON client's "1200") become numbers; other values stay as they are."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _arith(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[object, object], object]:
    def apply(a: object, b: object) -> object:
        if _missing(a) or _missing(b):
            return _MISSING
        a, b = _number(a), _number(b)
        if not (isinstance(a, Number) and isinstance(b, Number)) or isinstance(a, bool) or isinstance(b, bool):
            raise TypeError(f"cannot compute {a!r} {symbol} {b!r}: not numbers")
        try:
            return op(a, b)
        except ZeroDivisionError:
            return _MISSING

    return apply


def _compare(op: Callable[[Any, Any], bool], ordered: bool) -> Callable[[object, object], bool]:
    def apply(a: object, b: object) -> bool:
        if _missing(a) or _missing(b):
            return False
        if ordered or isinstance(a, Number) or isinstance(b, Number):
            a, b = _number(a), _number(b)
        if ordered and isinstance(a, str) != isinstance(b, str):
            raise TypeError(f"cannot order {a!r} and {b!r}")
        return bool(op(a, b))

    return apply


def _member(a: object, options: Sequence[object]) -> bool:
    if _missing(a):
        return False
    a = _number(a) if any(isinstance(o, Number) for o in options) else a
    return a in options


BINARY = {
    ast.Add: _arith(operator.add, "+"),
    ast.Sub: _arith(operator.sub, "-"),
    ast.Mult: _arith(operator.mul, "*"),
    ast.Div: _arith(operator.truediv, "/"),
    ast.Mod: _arith(operator.mod, "%"),
}
COMPARE = {
    ast.Eq: _compare(operator.eq, ordered=False),
    ast.NotEq: _compare(operator.ne, ordered=False),
    ast.Lt: _compare(operator.lt, ordered=True),
    ast.LtE: _compare(operator.le, ordered=True),
    ast.Gt: _compare(operator.gt, ordered=True),
    ast.GtE: _compare(operator.ge, ordered=True),
}


def _fn_abs(x: object) -> object:
    return _MISSING if _missing(x) else abs(_number(x))


def _fn_min(*xs: object) -> object:
    return _MISSING if any(map(_missing, xs)) else min(map(_number, xs))


def _fn_max(*xs: object) -> object:
    return _MISSING if any(map(_missing, xs)) else max(map(_number, xs))


FUNCTIONS: dict[str, tuple[Callable[..., Any], bool]] = {  # name -> (function, returns a condition)
    "missing": (_missing, True),
    "abs": (_fn_abs, False),
    "min": (_fn_min, False),
    "max": (_fn_max, False),
}
ALLOWED_SYNTAX = (
    "column names (`quoted` if not identifiers), numbers, 'quoted text', True/False, + - * / %, comparisons "
    "(== != < <= > >=, chained), and/or/not, in [...], not in [...], missing(x), abs(x), min(..), max(..)"
)


class _Compiler:
    """Compile a whitelisted ``ast`` tree into closures; every node kind not handled here is refused."""

    def __init__(self, rule: str, aliases: Mapping[str, str]) -> None:
        self.rule = rule
        self.aliases = aliases
        self.columns: list[str] = []

    def fail(self, node: ast.AST, why: str) -> RuleError:
        where = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
        for alias, column in self.aliases.items():  # show `quoted column` names as the user wrote them
            where = where.replace(alias, f"`{column}`")
        return RuleError(f"rule {self.rule!r}: {why} in `{where}`; allowed: {ALLOWED_SYNTAX}")

    def condition(self, node: ast.expr) -> Evaluator:
        evaluator, is_condition = self.compile(node)
        if not is_condition:
            raise RuleError(
                f"rule {self.rule!r}: `{ast.unparse(node)}` is a value, not a condition; compare it "
                f"(e.g. `{ast.unparse(node)} > 0`)"
            )
        return evaluator

    def compile(self, node: ast.expr) -> tuple[Evaluator, bool]:  # one branch per node kind
        """Returns ``(evaluator, is_condition)``."""
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
                raise self.fail(node, f"constant of type {type(node.value).__name__} not allowed")
            value = node.value
            return (lambda row: value), isinstance(value, bool)
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise self.fail(node, f"{node.id} is a function; call it")
            column = self.aliases.get(node.id, node.id)
            if column not in self.columns:
                self.columns.append(column)
            return (lambda row: row.get(column)), False
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return (lambda row: all(p(row) for p in parts)), True
            return (lambda row: any(p(row) for p in parts)), True
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                inner = self.condition(node.operand)
                return (lambda row: not inner(row)), True
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                inner, is_condition = self.compile(node.operand)
                if is_condition:
                    raise self.fail(node, "a sign in front of a condition")
                negate = _arith(operator.mul, "*")
                sign = -1 if isinstance(node.op, ast.USub) else 1
                return (lambda row: negate(sign, inner(row))), False
            raise self.fail(node, f"operator {type(node.op).__name__} not allowed")
        if isinstance(node, ast.BinOp):
            op = BINARY.get(type(node.op))
            if op is None:
                raise self.fail(node, f"operator {type(node.op).__name__} not allowed")
            left, right = self.value(node.left), self.value(node.right)
            return (lambda row: op(left(row), right(row))), False
        if isinstance(node, ast.Compare):
            return self._compare(node), True
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = ast.unparse(node.func)
                raise self.fail(node, f"function {name!r} not allowed (only {', '.join(FUNCTIONS)})")
            if node.keywords:
                raise self.fail(node, "keyword arguments not allowed")
            function, is_condition = FUNCTIONS[node.func.id]
            if node.func.id in ("missing", "abs") and len(node.args) != 1:
                raise self.fail(node, f"{node.func.id}() takes one argument")
            if not node.args:
                raise self.fail(node, f"{node.func.id}() needs arguments")
            args = [self.value(a) for a in node.args]
            return (lambda row: function(*(a(row) for a in args))), is_condition
        raise self.fail(node, f"{type(node).__name__} not allowed")

    def value(self, node: ast.expr) -> Evaluator:
        evaluator, is_condition = self.compile(node)
        if is_condition and not (isinstance(node, ast.Constant) and isinstance(node.value, bool)):
            raise self.fail(node, "a condition used as a value")
        return evaluator

    def _options(self, node: ast.expr) -> tuple[object, ...]:
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(node, "`in` needs a list of constants, e.g. in ['rent', 'other']")
        options = []
        for element in node.elts:
            if not isinstance(element, ast.Constant) or not isinstance(element.value, (int, float, str, bool)):
                raise self.fail(element, "`in` lists hold constants only")
            options.append(element.value)
        return tuple(options)

    def _compare(self, node: ast.Compare) -> Evaluator:
        steps: list[Callable[[Mapping[str, Any], object], tuple[bool, object]]] = []
        left = self.value(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                options, negate = self._options(comparator), isinstance(op, ast.NotIn)

                def step(
                    row: Mapping[str, Any], a: object, options: tuple = options, negate: bool = negate
                ) -> tuple[bool, object]:
                    if _missing(a):
                        return False, a
                    return _member(a, options) != negate, a

            else:
                compare = COMPARE.get(type(op))
                if compare is None:
                    raise self.fail(node, f"comparison {type(op).__name__} not allowed")
                right = self.value(comparator)

                def step(
                    row: Mapping[str, Any], a: object, compare: Callable = compare, right: Evaluator = right
                ) -> tuple[bool, object]:
                    b = right(row)
                    return compare(a, b), b

            steps.append(step)

        def evaluate(row: Mapping[str, Any]) -> bool:
            current = left(row)
            for step in steps:  # a < b < c: every link must hold
                ok, current = step(row, current)
                if not ok:
                    return False
            return True

        return evaluate


def _depth(tree: ast.AST) -> int:
    """The deepest nesting of an expression tree, walked without recursion (so any input is measured safely)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def parse_condition(condition: str, rule: str = "condition") -> tuple[Evaluator, list[str]]:
    """Parse one condition safely.

    Returns:
        ``(evaluate(row) -> bool, the columns it reads)``.

    Raises:
        RuleError: a syntax error, a node type outside the whitelist, or a value where a condition belongs; the
            message names ``rule``.
    """
    if not isinstance(condition, str) or not condition.strip():
        raise RuleError(f"rule {rule!r}: the condition is empty")
    if len(condition) > MAX_CONDITION_CHARS:
        raise RuleError(f"rule {rule!r}: the condition is longer than {MAX_CONDITION_CHARS} characters")
    aliases: dict[str, str] = {}

    def alias(match: re.Match[str]) -> str:
        name = f"_column_{len(aliases)}"
        aliases[name] = match.group(1)
        return name

    source = _BACKTICKED.sub(alias, condition.strip())
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        hint = " (compare with ==, not =)" if re.search(r"[^=!<>]=[^=]", source) else ""
        raise RuleError(f"rule {rule!r}: `{condition}` is not a valid condition: {err.msg}{hint}") from None
    except (RecursionError, MemoryError, ValueError):
        raise RuleError(f"rule {rule!r}: `{condition[:80]}...` is too deeply nested") from None
    if _depth(tree) > MAX_CONDITION_DEPTH:  # the compiler and the evaluators recurse: bound it before they run
        raise RuleError(
            f"rule {rule!r}: `{condition[:80]}` is nested more than {MAX_CONDITION_DEPTH} levels deep; simplify it"
        )
    compiler = _Compiler(rule, aliases)
    evaluate = compiler.condition(tree.body)
    return evaluate, compiler.columns


@dataclass(frozen=True)
class Rule:
    """``when`` holds for a row -> ``decision`` overrides the model's."""

    name: str
    when: str
    decision: str
    evaluate: Evaluator = field(repr=False, compare=False)
    columns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, when: str, decision: str) -> Rule:
        if not name:
            raise RuleError("every rule needs a name")
        if not decision:
            raise RuleError(f"rule {name!r}: decision is empty")
        evaluate, columns = parse_condition(when, name)
        return cls(name, when, decision, evaluate, tuple(columns))

    def matches(self, row: Mapping[str, Any]) -> bool:
        try:
            return bool(self.evaluate(row))
        except (TypeError, ValueError, OverflowError) as err:
            raise RuleError(f"rule {self.name!r} (`{self.when}`): {err}") from None


class RuleSet:
    """Ordered rules over a row's columns; the first that matches overrides the model's decision.

    Args:
        rules: the rules, in order of precedence.
        decisions: the model's label -> its business decision (labels not listed keep their name).
        counts_as: a decision -> the label it counts as when ``finexp-eval`` scores model + rules (decisions of
            ``decisions`` count as their label already; a decision only rules make, such as ``refer``, needs one).
        name: the policy's name (reported in outputs and ``/metadata``).
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        decisions: Mapping[str, str] | None = None,
        counts_as: Mapping[str, str] | None = None,
        name: str = "rules",
    ) -> None:
        names = [r.name for r in rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise RuleError(f"rule names must be unique: {', '.join(duplicated)} appear more than once")
        self.rules = list(rules)
        self.decisions = dict(decisions or {})
        self.counts_as = dict(counts_as or {})
        self.name = name

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[Mapping[str, Any]],
        decisions: Mapping[str, str] | None = None,
        counts_as: Mapping[str, str] | None = None,
        name: str = "rules",
    ) -> RuleSet:
        """Rules from plain mappings ``{name, when, decision}`` (a ``rules`` config's list)."""
        rules = []
        for i, spec in enumerate(specs):
            unknown = sorted(set(spec) - {"name", "when", "decision"})
            if unknown:
                raise RuleError(f"rules[{i}]: unknown key(s) {', '.join(unknown)}; a rule has name, when, decision")
            rules.append(Rule.parse(str(spec.get("name") or f"rule_{i}"), spec.get("when"), spec.get("decision")))
        return cls(rules, decisions, counts_as, name)

    @property
    def columns(self) -> list[str]:
        """Every column some rule reads."""
        return list(dict.fromkeys(c for r in self.rules for c in r.columns))

    def check_columns(self, available: Iterable[str]) -> None:
        """Refuse rules naming a column the rows will not have.

        Raises:
            RuleError: naming the rule and the columns available.
        """
        available = list(available)
        for rule in self.rules:
            unknown = [c for c in rule.columns if c not in available]
            if unknown:
                raise RuleError(
                    f"rule {rule.name!r} (`{rule.when}`) reads unknown column(s) {', '.join(map(repr, unknown))}; "
                    f"columns: {', '.join(available)} (quote text values: Records == 'yes'; add other input "
                    "columns to rules.extra_columns)"
                )

    def check_labels(self, labels: Sequence[str]) -> None:
        """Refuse ``decisions`` keys that are not labels of the model."""
        unknown = [k for k in self.decisions if k not in labels]
        if unknown:
            raise RuleError(
                f"rules.decisions: {', '.join(map(repr, unknown))} not a label; labels: {', '.join(labels)}"
            )

    def model_decision(self, label: str | None) -> str | None:
        return None if label is None else self.decisions.get(label, label)

    def decide(
        self, rows: Sequence[Mapping[str, Any]], labels: Sequence[str | None], strict: bool = False
    ) -> list[Decision]:
        """The decisions for each row given the model's label (None: the row was not scored, nothing is decided).

        A rule that cannot be evaluated on a row (arithmetic on text) gives that row a :class:`Decision` with the
        error naming the rule, or raises with ``strict``.

        Raises:
            RuleError: with ``strict``, on the first row a rule fails on.
        """
        out = []
        for row, label in zip(rows, labels, strict=True):
            if label is None:
                out.append(Decision(None, None, None))
                continue
            model = self.model_decision(label)
            try:
                rule = next((r for r in self.rules if r.matches(row)), None)
            except RuleError as err:
                if strict:
                    raise
                out.append(Decision(model, None, None, str(err)))
                continue
            out.append(Decision(model, rule.name if rule else None, rule.decision if rule else model))
        return out

    def label_of(self, decision: str, labels: Sequence[str]) -> str:
        """The label a decision counts as when model + rules are scored.

        Raises:
            RuleError: the decision maps to no label.
        """
        if decision in self.counts_as:
            return self.counts_as[decision]
        matches = [label for label in labels if self.model_decision(label) == decision]
        if len(matches) == 1:
            return matches[0]
        raise RuleError(
            f"decision {decision!r} counts as no single label ({', '.join(labels)}); "
            f"set rules.counts_as.{decision}=<label> to score model + rules"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rules": [{"name": r.name, "when": r.when, "decision": r.decision} for r in self.rules],
            "decisions": self.decisions,
            "counts_as": self.counts_as,
        }


def score_with_rules(
    rules: RuleSet,
    rows: Sequence[Mapping[str, Any]],
    probs: Any,
    truth: Any,
    labels: Sequence[str],
    stage: str = "test",
) -> tuple[dict[str, float], list[Decision]]:
    """Metrics of model + rules on labelled rows, beside the model's own.

    A row a rule overrode gets all its probability on the label the rule's decision counts as (``label_of``); other
    rows keep the model's probabilities. Metrics are the model's (``finexp.problems.classification_training``) named
    ``{stage}_rules/{metric}``, plus ``rules/overridden`` (share of rows a rule decided, whether or not it changed the
    label) and ``rules/fired/<rule>`` (rows per rule).

    Raises:
        RuleError: a rule's decision counts as no label, or a rule fails on a row.
    """
    import numpy as np
    import torch

    from finexp.problems.classification_training import build_classification_metrics

    probs = np.array(probs, dtype=np.float64, copy=True)
    predicted = [labels[int(i)] for i in probs.argmax(1)]
    decisions = rules.decide(rows, predicted, strict=True)
    index = {label: i for i, label in enumerate(labels)}
    fired: dict[str, int] = dict.fromkeys((r.name for r in rules.rules), 0)
    for i, decision in enumerate(decisions):
        if decision.rule is not None:
            fired[decision.rule] += 1
            probs[i] = 0.0
            probs[i, index[rules.label_of(decision.final_decision, labels)]] = 1.0
    metrics = build_classification_metrics(len(labels))
    logits = torch.log(torch.as_tensor(probs, dtype=torch.float32).clamp_min(1e-12))  # the metrics take logits
    metrics.update(logits, torch.as_tensor(np.asarray(truth), dtype=torch.long))
    out = {f"{stage}_rules/{k}": float(v) for k, v in metrics.compute().items()}
    out["rules/overridden"] = sum(fired.values()) / max(1, len(decisions))
    out |= {f"rules/fired/{name}": float(n) for name, n in fired.items()}
    return out, decisions
