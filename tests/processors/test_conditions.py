"""Tests for processors.conditions: NetBox's own cases, then the edge cases of the spec's §6."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from processors.conditions import (
    Condition,
    ConditionSet,
    InvalidCondition,
    UnhandledEvaluationError,
    build_condition_set,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CASES_PATH = REPO_ROOT.parent / "shared" / "conditions" / "netbox_cases.json"
CASES: list[dict[str, Any]] = json.loads(CASES_PATH.read_text(encoding="utf-8"))

Outcome = bool | str


def outcome(ruleset: object, data: object) -> Outcome:
    """Return the result in the cases' vocabulary, with "raw <error>" where NetBox raises raw."""
    try:
        condition_set = ConditionSet(ruleset)
    except ValueError:
        return "value_error"
    try:
        result = condition_set.eval(data)
    except UnhandledEvaluationError as exc:
        cause = exc.__cause__
        return "raw re.error" if isinstance(cause, re.error) else f"raw {type(cause).__name__}"
    except InvalidCondition:
        return "invalid_condition"
    assert type(result) is bool
    return result


def eventrule_outcome(conditions: object, data: object) -> Outcome:
    """Return what NetBox's EventRule.eval_conditions gives: true, false or "raises"."""
    try:
        condition_set = build_condition_set(conditions)
    except ValueError:
        return "raises"
    if condition_set is None:
        return True
    try:
        return condition_set.eval(data)
    except UnhandledEvaluationError:
        return "raises"
    except InvalidCondition:
        return False


def save_outcome(conditions: object) -> str:
    """Return what NetBox's EventRule.clean() gives: "accepted" or "validation_error"."""
    try:
        build_condition_set(conditions)
    except ValueError:
        return "validation_error"
    return "accepted"


def test_cases_file_is_found() -> None:
    """The shared cases file sits beside the repository and holds all of NetBox's cases."""
    assert CASES_PATH.is_file()
    assert len(CASES) == 89


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_netbox_case(case: dict[str, Any]) -> None:
    """Every NetBox case gives exactly the expected outcome."""
    assert outcome(case["ruleset"], case["data"]) == case["expect"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_netbox_case_as_event_rule(case: dict[str, Any]) -> None:
    """Our outcomes map one to one onto NetBox's EventRule results on save and on evaluation."""
    assert eventrule_outcome(case["ruleset"], case["data"]) == case["eventrule_result"]
    assert save_outcome(case["ruleset"]) == case["accepted_on_save"]


# §6 of the spec: data is `device_active` unless stated otherwise.
DEVICE: dict[str, Any] = {
    "name": "edge-rtr-01",
    "status": {"value": "active", "label": "Active"},
    "tenant": None,
    "tags": [{"name": "Core", "slug": "core"}, {"name": "Prod", "slug": "prod"}],
    "custom_fields": {"sla_level": None, "rack_units": 1},
    "local_context_data": {
        "flag_false": False,
        "flag_true": True,
        "matrix": [[1, 2], [3]],
        "dotted.key": "dot",
    },
    "comments": "Tier III\n",
    "vid": 100,
    "enabled": True,
    "mtu": None,
}
NAME_TRUE = {"attr": "name", "value": "edge-rtr-01"}
NAME_FALSE = {"attr": "name", "value": "x"}
MISSING = {"attr": "missing", "value": 1}

EDGE_CASES: list[tuple[str, object, object, Outcome]] = [
    ("1-upper-AND", {"AND": [NAME_TRUE]}, DEVICE, "value_error"),
    ("2-nested-OR", {"and": [{"OR": [NAME_TRUE]}]}, DEVICE, "value_error"),
    ("3-nested-extra-key", {"and": [{**NAME_FALSE, "foo": 1}]}, DEVICE, "value_error"),
    ("3-top-extra-key", {**NAME_FALSE, "foo": 1}, DEVICE, "value_error"),
    ("4-empty-and", {"and": []}, DEVICE, True),
    ("4-empty-or", {"or": []}, DEVICE, False),
    ("4-empty-and-object", {"and": {}}, DEVICE, True),
    ("4-empty-or-string", {"or": ""}, DEVICE, False),
    ("4-nested-empty-or", {"and": [NAME_TRUE, {"or": []}]}, DEVICE, False),
    ("5-choice-dict", {"attr": "status", "value": "active"}, DEVICE, False),
    (
        "6-negate-null-relation",
        {"attr": "tenant.slug", "value": "acme", "negate": True},
        DEVICE,
        "invalid_condition",
    ),
    (
        "7-falsy-intermediate",
        {"attr": "local_context_data.flag_false.x", "value": 1},
        DEVICE,
        "invalid_condition",
    ),
    (
        "7-truthy-intermediate",
        {"attr": "local_context_data.flag_true.x", "value": 1},
        DEVICE,
        "raw TypeError",
    ),
    ("8-through-string", {"attr": "name.x", "value": 1}, DEVICE, "raw TypeError"),
    ("9-projection", {"attr": "tags.slug", "value": ["core", "prod"]}, DEVICE, True),
    ("9-projection-order", {"attr": "tags.slug", "value": ["prod", "core"]}, DEVICE, False),
    (
        "10-no-substring-in-list",
        {"attr": "tags.slug", "value": "cor", "op": "contains"},
        DEVICE,
        False,
    ),
    (
        "11-in-whole-list",
        {"attr": "tags.slug", "value": ["core", "prod", "x"], "op": "in"},
        DEVICE,
        False,
    ),
    (
        "11-in-list-of-lists",
        {"attr": "tags.slug", "value": [["core", "prod"]], "op": "in"},
        DEVICE,
        True,
    ),
    (
        "12-regex-on-list",
        {"attr": "tags.slug", "value": "core", "op": "regex"},
        DEVICE,
        "invalid_condition",
    ),
    (
        "13-empty-list-projects",
        {"attr": "tags.slug.whatever", "value": []},
        {**DEVICE, "tags": []},
        True,
    ),
    ("14-no-indexing", {"attr": "tags.0.slug", "value": "core"}, DEVICE, "invalid_condition"),
    (
        "15-list-of-lists",
        {"attr": "local_context_data.matrix.x", "value": 1},
        DEVICE,
        "raw TypeError",
    ),
    (
        "15-falsy-list-element",
        {"attr": "tags.slug", "value": 1},
        {"tags": [{"slug": "a"}, None]},
        "invalid_condition",
    ),
    (
        "16-missing-is-not-null",
        {"attr": "custom_fields.nonexistent", "value": None},
        DEVICE,
        "invalid_condition",
    ),
    ("16-null-is-null", {"attr": "custom_fields.sla_level", "value": None}, DEVICE, True),
    (
        "17-contains-dict-key",
        {"attr": "custom_fields", "value": "sla_level", "op": "contains"},
        DEVICE,
        True,
    ),
    ("18-true-equals-1", {"attr": "custom_fields.rack_units", "value": True}, DEVICE, True),
    ("19-no-coercion", {"attr": "vid", "value": "100"}, DEVICE, False),
    ("20-bool-data-is-numeric", {"attr": "enabled", "value": 0, "op": "gt"}, DEVICE, True),
    ("20-bool-value-gt", {"attr": "enabled", "value": True, "op": "gt"}, DEVICE, "value_error"),
    ("21-gt-null", {"attr": "mtu", "value": 1500, "op": "gt"}, DEVICE, "invalid_condition"),
    ("22-regex-not-search", {"attr": "name", "value": "rtr", "op": "regex"}, DEVICE, False),
    ("22-regex-anchored-start", {"attr": "name", "value": "edge", "op": "regex"}, DEVICE, True),
    (
        "23-dollar-trailing-newline",
        {"attr": "comments", "value": "^Tier III$", "op": "regex"},
        DEVICE,
        True,
    ),
    (
        "23-strict-end",
        {"attr": "comments", "value": r"^Tier III\Z", "op": "regex"},
        DEVICE,
        False,
    ),
    ("24-invalid-pattern", {"attr": "name", "value": "[", "op": "regex"}, DEVICE, "raw re.error"),
    (
        "25-pattern-before-type",
        {"attr": "tenant", "value": "(", "op": "regex"},
        DEVICE,
        "raw re.error",
    ),
    (
        "25-path-before-pattern",
        {"attr": "missing", "value": "(", "op": "regex"},
        DEVICE,
        "invalid_condition",
    ),
    (
        "26-late-global-flag",
        {"attr": "name", "value": "e(?i)DGE", "op": "regex"},
        DEVICE,
        "raw re.error",
    ),
    ("26-leading-flag", {"attr": "name", "value": "(?i)EDGE", "op": "regex"}, DEVICE, True),
    (
        "26-huge-repeat",
        {"attr": "name", "value": "a{4294967296}", "op": "regex"},
        DEVICE,
        "raw OverflowError",
    ),
    ("27-or-short-circuit", {"or": [NAME_TRUE, MISSING]}, DEVICE, True),
    ("27-or-error-first", {"or": [MISSING, NAME_TRUE]}, DEVICE, "invalid_condition"),
    ("27-and-short-circuit", {"and": [NAME_FALSE, MISSING]}, DEVICE, False),
    ("27-and-error-first", {"and": [MISSING, NAME_FALSE]}, DEVICE, "invalid_condition"),
    (
        "27-nested-error-propagates",
        {"or": [{"and": [MISSING]}, NAME_TRUE]},
        DEVICE,
        "invalid_condition",
    ),
    (
        "27-bad-regex-not-reached",
        {"or": [NAME_TRUE, {"attr": "name", "value": "[", "op": "regex"}]},
        DEVICE,
        True,
    ),
    (
        "28-construction-not-short-circuited",
        {"or": [NAME_TRUE, {"attr": "name", "value": "x", "op": "gt"}]},
        DEVICE,
        "value_error",
    ),
    ("29-negate-string-false", {**NAME_TRUE, "negate": "false"}, DEVICE, False),
    ("30-attr-not-string", {"attr": 5, "value": 1}, DEVICE, "raw AttributeError"),
    (
        "31-dict-in-list-value",
        {"attr": "status", "value": [{"value": "active", "label": "Active"}], "op": "in"},
        DEVICE,
        True,
    ),
    (
        "32-int-in-string",
        {"attr": "name", "value": 1, "op": "contains"},
        DEVICE,
        "invalid_condition",
    ),
    (
        "33-unhashable-dict-key",
        {"attr": "status", "value": ["value"], "op": "contains"},
        DEVICE,
        "invalid_condition",
    ),
    ("34-op-upper", {"attr": "name", "value": "x", "op": "EQ"}, DEVICE, "value_error"),
    ("34-op-neq", {"attr": "name", "value": "x", "op": "neq"}, DEVICE, "value_error"),
    ("34-op-null", {"attr": "name", "value": "x", "op": None}, DEVICE, "value_error"),
    (
        "35-in-needs-array",
        {"attr": "status.value", "value": "active", "op": "in"},
        DEVICE,
        "value_error",
    ),
    ("36-null", None, DEVICE, "value_error"),
    ("36-empty-object", {}, DEVICE, "value_error"),
    ("36-empty-array", [], DEVICE, "value_error"),
    ("37-null-data", {"attr": "status", "value": "completed"}, None, "invalid_condition"),
    ("37-null-data-empty-and", {"and": []}, None, True),
    (
        "39-dotted-key",
        {"attr": "local_context_data.dotted.key", "value": "dot"},
        DEVICE,
        "invalid_condition",
    ),
    ("40-empty-segment", {"attr": "status.", "value": "active"}, DEVICE, "invalid_condition"),
]


@pytest.mark.parametrize(
    ("ruleset", "data", "expected"),
    [case[1:] for case in EDGE_CASES],
    ids=[case[0] for case in EDGE_CASES],
)
def test_spec_edge_case(ruleset: object, data: object, expected: Outcome) -> None:
    """Each row of the spec's §6 table (and a few neighbours) behaves as NetBox does."""
    assert outcome(ruleset, data) == expected


@pytest.mark.parametrize(
    ("negate", "negates"),
    [
        ("false", True),
        ("true", True),
        (1, True),
        ([0], True),
        (True, True),
        (0, False),
        ("", False),
        (None, False),
        ([], False),
        (False, False),
    ],
)
def test_negate_is_truthiness(negate: object, negates: bool) -> None:
    """negate is not validated: only its Python truthiness counts."""
    assert outcome({**NAME_TRUE, "negate": negate}, DEVICE) is (not negates)


@pytest.mark.parametrize(
    "ruleset",
    [
        pytest.param({"AND": [NAME_TRUE]}, id="top-upper-key"),
        pytest.param({"Or": [NAME_TRUE]}, id="top-mixed-key"),
        pytest.param({"and": [{"and": [NAME_TRUE], "negate": True}]}, id="nested-set-negate"),
        pytest.param({"and": [{"attr": "name"}]}, id="nested-missing-value"),
        pytest.param({"and": [{}]}, id="nested-empty-object"),
        pytest.param({"and": ["name"]}, id="nested-string"),
        pytest.param({"and": [None]}, id="nested-null"),
        pytest.param({"and": [[NAME_TRUE]]}, id="nested-list"),
        pytest.param({"and": [1]}, id="nested-number"),
        pytest.param({"and": None}, id="children-null"),
        pytest.param({"and": 1}, id="children-number"),
        pytest.param({"and": True}, id="children-bool"),
        pytest.param({"and": NAME_TRUE}, id="children-object"),
        pytest.param({"and": "ab"}, id="children-string"),
        pytest.param({"attr": "x"}, id="one-key-condition"),
        pytest.param({"and": [NAME_TRUE], "or": [NAME_TRUE]}, id="two-logic-keys"),
        pytest.param({"attr": "x", "value": {"a": 1}}, id="object-value"),
        pytest.param("and", id="string-ruleset"),
    ],
)
def test_netbox_construction_crashes_are_value_errors(ruleset: object) -> None:
    """What NetBox fails to build (KeyError, TypeError or ValueError) is always a ValueError."""
    with pytest.raises(ValueError):
        ConditionSet(ruleset)


def test_construction_error_names_the_position() -> None:
    """A nested construction error says where it is and what is wrong."""
    ruleset = {"or": [NAME_TRUE, {"and": [NAME_TRUE, {**NAME_FALSE, "foo": 1}]}]}
    with pytest.raises(ValueError, match=r"^or\[1\]: and\[1\]: .*'foo'"):
        ConditionSet(ruleset)


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte", "in", "regex"])
def test_bool_value_is_not_a_number(value: bool, op: str) -> None:
    """A bool value is its own type: ordered comparisons, in and regex reject it."""
    with pytest.raises(ValueError):
        Condition("enabled", value, op)


@pytest.mark.parametrize(
    ("value", "data_value", "expected"),
    [
        (1, 1.0, True),
        (0, False, True),
        (True, 1, True),
        ([0.5, 1, 2.5], [0.5, True, 2.5], True),
        ("1", 1, False),
        (None, 0, False),
    ],
)
def test_eq_uses_python_equality(value: object, data_value: object, expected: bool) -> None:
    """eq is Python ==: 1 == 1.0 == true, but no string/number coercion."""
    assert Condition("x", value).eval({"x": data_value}) is expected


def test_regex_is_unicode() -> None:
    """Python str patterns are Unicode: \\d matches non-ASCII digits."""
    assert Condition("x", r"\d+\Z", "regex").eval({"x": "١٢٣"}) is True


def test_regex_is_compiled_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patterns compile on first evaluation, once, and a bad one fails every time it is reached."""
    calls: list[str] = []
    real_compile = re.compile

    def counting_compile(pattern: str) -> re.Pattern[str]:
        calls.append(pattern)
        return real_compile(pattern)

    monkeypatch.setattr(re, "compile", counting_compile)
    good = Condition("name", "edge", "regex")
    bad = Condition("name", "[", "regex")
    assert calls == []
    assert good.eval(DEVICE) is True
    assert good.eval({"name": "core"}) is False
    for _ in range(2):
        with pytest.raises(UnhandledEvaluationError) as caught:
            bad.eval(DEVICE)
        assert isinstance(caught.value.__cause__, re.error)
    assert calls == ["edge", "["]


@pytest.mark.parametrize(
    ("ruleset", "cause"),
    [
        ({"attr": "name.x", "value": 1}, TypeError),
        ({"attr": 5, "value": 1}, AttributeError),
        ({"attr": "name", "value": "[", "op": "regex"}, re.error),
    ],
)
def test_unhandled_errors_are_invalid_conditions(ruleset: object, cause: type) -> None:
    """NetBox's raw escapes are InvalidCondition subclasses chained to the raw error."""
    condition_set = ConditionSet(ruleset)
    with pytest.raises(InvalidCondition) as caught:
        condition_set.eval(DEVICE)
    assert isinstance(caught.value, UnhandledEvaluationError)
    assert isinstance(caught.value.__cause__, cause)


@pytest.mark.parametrize("conditions", [None, {}, [], "", 0, 0.0, False])
def test_falsy_conditions_always_match(conditions: object) -> None:
    """Falsy conditions mean "no conditions", as in NetBox's EventRule."""
    assert build_condition_set(conditions) is None
    assert eventrule_outcome(conditions, None) is True


@pytest.mark.parametrize("conditions", [[NAME_TRUE], "and", 1, True, {"foo": []}])
def test_truthy_invalid_conditions_are_rejected(conditions: object) -> None:
    """Truthy conditions are built, so anything but a valid ruleset raises ValueError."""
    with pytest.raises(ValueError):
        build_condition_set(conditions)


def test_build_condition_set_builds() -> None:
    """Truthy valid conditions give a ConditionSet that evaluates."""
    condition_set = build_condition_set({"and": [NAME_TRUE]})
    assert condition_set is not None
    assert condition_set.eval(DEVICE) is True


def test_condition_set_is_reusable_across_events() -> None:
    """Built once, a set evaluates many events independently (no state leaks between them)."""
    condition_set = ConditionSet({"attr": "tags.slug", "value": "core", "op": "contains"})
    assert condition_set.eval(DEVICE) is True
    assert condition_set.eval({"tags": []}) is False
    with pytest.raises(InvalidCondition):
        condition_set.eval({"tags": None})
    assert condition_set.eval(DEVICE) is True
