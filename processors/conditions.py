"""Evaluate NetBox event-rule conditions exactly as NetBox 4.6 does, on JSON-decoded event data.

The specification is ``../shared/conditions/README.md``: the grammar, path resolution, operators,
short-circuiting and error behaviour all follow NetBox's ``extras/conditions.py``. This is our own
typed implementation with the same public surface (``Condition``, ``ConditionSet``,
``InvalidCondition``), and two deliberate differences that keep the stream safe:

* Construction raises only ``ValueError``. NetBox lets some broken rulesets escape as ``KeyError``
  or ``TypeError`` instead; here they all become ``ValueError``, so a configuration is rejected
  when it is loaded.
* Evaluation raises only ``InvalidCondition``. Where NetBox returns ``InvalidCondition`` (its
  EventRule then evaluates to false), so do we. Where NetBox lets a raw ``TypeError``,
  ``AttributeError`` or regex error escape (its EventRule then raises), we raise the subclass
  ``UnhandledEvaluationError``, chained to that raw error. Every NetBox outcome still maps to one
  outcome here.

Parsing and validation happen once, at construction: the attribute path is split and the operator
chosen there. Regex patterns are compiled on first use and cached, because NetBox accepts an invalid
pattern when the rule is saved and only fails when it is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, NoReturn

__all__ = (
    "Condition",
    "ConditionSet",
    "InvalidCondition",
    "UnhandledEvaluationError",
    "build_condition_set",
)

AND: Final = "and"
OR: Final = "or"
_LOGIC: Final = (AND, OR)

_CONDITION_KEYS: Final = frozenset({"attr", "value", "op", "negate"})
_REQUIRED_KEYS: Final = ("attr", "value")

# The operators each value type accepts. Keyed by the exact type, as NetBox checks
# ``type(value)``: a bool is its own type here, so ``true`` with ``gt`` is rejected.
_OPS_BY_VALUE_TYPE: Final[dict[type, tuple[str, ...]]] = {
    str: ("eq", "contains", "regex"),
    bool: ("eq", "contains"),
    int: ("eq", "gt", "gte", "lt", "lte", "contains"),
    float: ("eq", "gt", "gte", "lt", "lte", "contains"),
    list: ("eq", "in", "contains"),
    type(None): ("eq",),
}

# Falsy values on a path are looked up in an empty dict, as NetBox does (``obj or {}``), so that
# they fail with a KeyError (InvalidCondition). Only ever read from, never mutated.
_EMPTY: Final[dict[str, Any]] = {}

# Everything ``re.compile`` raises for a bad pattern; NetBox lets all of them escape.
_PATTERN_ERRORS: Final = (re.error, OverflowError, RecursionError)

_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}

_Test = Callable[[Any], bool]


class InvalidCondition(Exception):
    """A condition could not be evaluated against the data; the rule does not match."""


class UnhandledEvaluationError(InvalidCondition):
    """An evaluation error NetBox does not catch (a raw TypeError, AttributeError or regex error).

    NetBox's EventRule raises these instead of evaluating to false. The raw error is the
    ``__cause__``; for nbstream the outcome is the same as any InvalidCondition: no match.
    """


def _json_type(value: object) -> str:
    """Return the JSON name of a value's type, for error messages."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _resolve(data: Any, path: tuple[str, ...]) -> Any:
    """Return the value at path in data; KeyError if a key is missing, TypeError on a scalar."""
    current = data
    for key in path:
        if isinstance(current, list):
            # A list projects the key over its elements; a list of lists fails on the next key.
            current = [(item or _EMPTY)[key] for item in current]
        else:
            current = (current or _EMPTY)[key]
    return current


class _RegexMatch:
    """``re.match(pattern, x)``, compiling the pattern on first use and remembering the outcome."""

    __slots__ = ("_compiled", "_error", "_pattern")

    def __init__(self, pattern: str) -> None:
        """Store the pattern without compiling it; an invalid one must only fail at evaluation."""
        self._pattern = pattern
        self._compiled: re.Pattern[str] | None = None
        self._error: Exception | None = None

    def __call__(self, data_value: Any) -> bool:
        """Return whether the pattern matches at the start of data_value (TypeError if no str)."""
        compiled = self._compiled
        if compiled is None:
            compiled = self._compile()
        # The pattern is compiled before the data type is checked, as in NetBox: an invalid
        # pattern is a regex error even when the data is null.
        return compiled.match(data_value) is not None

    def _compile(self) -> re.Pattern[str]:
        """Return the compiled pattern; raise UnhandledEvaluationError if it does not compile."""
        if self._error is None:
            try:
                self._compiled = re.compile(self._pattern)
            except _PATTERN_ERRORS as exc:
                # Keep the error, not its frames, so a bad rule costs no recompile per event.
                self._error = exc.with_traceback(None)
            else:
                return self._compiled
        raise UnhandledEvaluationError(
            f"Invalid regex pattern {self._pattern!r}: {self._error}"
        ) from self._error


def _make_test(op: str, value: Any) -> _Test:
    """Return the operator as a function of the resolved data value (NetBox's ``eval_<op>``)."""
    # Operand order is NetBox's, so Python picks the same comparison methods and error messages.
    match op:
        case "eq":
            return lambda data_value: data_value == value
        case "gt":
            return lambda data_value: data_value > value
        case "gte":
            return lambda data_value: data_value >= value
        case "lt":
            return lambda data_value: data_value < value
        case "lte":
            return lambda data_value: data_value <= value
        case "in":
            return lambda data_value: data_value in value
        case "contains":
            return lambda data_value: value in data_value
        case "regex":
            return _RegexMatch(value)
    raise AssertionError(f"operator {op!r} was not validated")


class Condition:
    """One condition: resolve ``attr`` in the data, apply ``op`` with ``value``, then ``negate``."""

    OPERATORS: Final = ("eq", "gt", "gte", "lt", "lte", "in", "contains", "regex")

    __slots__ = ("_negate", "_path", "_test", "attr", "negate", "op", "value")

    def __init__(
        self, attr: object, value: object, op: object = "eq", negate: object = False
    ) -> None:
        """Validate op and value; raise ValueError if NetBox would reject them."""
        if not isinstance(op, str) or op not in self.OPERATORS:
            raise ValueError(
                f"Unknown operator: {op!r}. Must be one of: {', '.join(self.OPERATORS)}"
            )
        allowed = _OPS_BY_VALUE_TYPE.get(type(value))
        if allowed is None:
            raise ValueError(f"Unsupported value type: {_json_type(value)}")
        if op not in allowed:
            raise ValueError(f"Invalid type for {op} operation: {_json_type(value)}")
        self.attr = attr
        self.value = value
        self.op = op
        self.negate = negate
        # NetBox validates neither attr nor negate: a non-string attr fails only at evaluation,
        # and negate counts by truthiness ("false" negates, [] does not).
        self._path = tuple(attr.split(".")) if isinstance(attr, str) else None
        self._negate = bool(negate)
        self._test = _make_test(op, value)

    def eval(self, data: object) -> bool:
        """Return the result on data; raise InvalidCondition if it cannot be evaluated."""
        path = self._path
        if path is None:
            self._raise_attr_not_a_string()
        try:
            found = _resolve(data, path)
        except KeyError:
            raise InvalidCondition(f"Invalid key path: {self.attr}") from None
        except TypeError as exc:
            raise UnhandledEvaluationError(
                f"Cannot look up a key in a non-empty scalar or nested list on path "
                f"'{self.attr}': {exc}"
            ) from exc
        try:
            result = self._test(found)
        except TypeError as exc:
            raise InvalidCondition(
                f"Invalid data type at '{self.attr}' for '{self.op}' evaluation: {exc}"
            ) from exc
        # Negation applies to a result only: an error above never becomes a match.
        return not result if self._negate else result

    def _raise_attr_not_a_string(self) -> NoReturn:
        """Raise what NetBox raises for a non-string attr (AttributeError on ``attr.split``)."""
        raw = AttributeError(f"'{type(self.attr).__name__}' object has no attribute 'split'")
        raise UnhandledEvaluationError(
            f"attr must be a string, not {_json_type(self.attr)}: {self.attr!r}"
        ) from raw


class ConditionSet:
    """An 'and' or 'or' of conditions and nested sets, built eagerly and evaluated lazily."""

    __slots__ = ("_any", "conditions", "logic")

    def __init__(self, ruleset: object) -> None:
        """Build the whole ruleset; raise ValueError for anything NetBox cannot build."""
        if not isinstance(ruleset, dict):
            raise ValueError(f"Ruleset must be a dictionary, not {_json_type(ruleset)}")
        self.conditions: tuple[Condition | ConditionSet, ...]
        if len(ruleset) == 1:
            ((key, children),) = ruleset.items()
            logic = key.lower() if isinstance(key, str) else key
            if logic not in _LOGIC:
                raise ValueError(f"Invalid logic type {key!r}: must be 'and' or 'or'")
            if key != logic:
                # NetBox lower-cases the key to check it but looks the children up under the
                # lower-cased key, so 'AND' fails there (with a KeyError).
                raise ValueError(
                    f"Invalid logic type {key!r}: only lowercase 'and' or 'or' is accepted"
                )
            self.logic: str = key
            self.conditions = _build_children(key, children)
        else:
            # Zero or several keys: the ruleset is one bare condition, an 'and' of one.
            self.logic = AND
            self.conditions = (_condition_from_dict(ruleset, top_level=True),)
        self._any = self.logic == OR

    def eval(self, data: object) -> bool:
        """Return the set's result on data, left to right with short-circuit (errors propagate)."""
        # Explicit loops rather than any()/all() over a generator: same laziness, fewer objects.
        if self._any:
            for condition in self.conditions:
                if condition.eval(data):
                    return True
            return False
        for condition in self.conditions:
            if not condition.eval(data):
                return False
        return True


def _build_children(logic: str, children: object) -> tuple[Condition | ConditionSet, ...]:
    """Return the built children of a set; raise ValueError naming the failing position."""
    if isinstance(children, dict | str) and not children:
        # NetBox iterates whatever it is given, so an empty object or string is an empty set.
        return ()
    if not isinstance(children, list):
        raise ValueError(
            f"'{logic}' must hold an array of conditions and sets, not {_json_type(children)}"
        )
    built: list[Condition | ConditionSet] = []
    for index, child in enumerate(children):
        try:
            built.append(_build_child(child))
        except ValueError as exc:
            raise ValueError(f"{logic}[{index}]: {exc}") from None
    return tuple(built)


def _build_child(child: object) -> Condition | ConditionSet:
    """Return a nested set or condition; raise ValueError if it cannot be built."""
    if not isinstance(child, dict):
        raise ValueError(f"an item must be a condition or a set object, not {_json_type(child)}")
    # Nested sets are recognised case-sensitively and only alone in their object; everything
    # else is read as a condition (NetBox then fails with a TypeError, here a ValueError).
    if len(child) == 1 and next(iter(child)) in _LOGIC:
        return ConditionSet(child)
    return _condition_from_dict(child, top_level=False)


def _condition_from_dict(rule: dict[Any, Any], *, top_level: bool) -> Condition:
    """Return the Condition a rule object describes; raise ValueError for wrong keys or values."""
    unknown = [key for key in rule if key not in _CONDITION_KEYS]
    missing = [key for key in _REQUIRED_KEYS if key not in rule]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
        if missing:
            problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
        hint = ""
        if any(isinstance(key, str) and key.lower() in _LOGIC for key in unknown):
            hint = (
                "; a set is an object with exactly one key, lowercase 'and' or 'or'"
                " (sets take no 'negate')"
            )
        where = "Incorrect key(s) informed" if top_level else "Incorrect key(s) in nested condition"
        raise ValueError(f"{where}: {' and '.join(problems)}{hint}")
    return Condition(rule["attr"], rule["value"], rule.get("op", "eq"), rule.get("negate", False))


def build_condition_set(conditions: object) -> ConditionSet | None:
    """Return the ConditionSet for a rule's conditions, or None if they are falsy (always matches).

    Falsy conditions (null, {}, [], "", 0, false) mean "no conditions", as in NetBox's EventRule.
    Raises ValueError when the conditions cannot be built.
    """
    if not conditions:
        return None
    return ConditionSet(conditions)
