"""Rule matching on the real NetBox payloads: object types, event types, conditions, errors."""

from __future__ import annotations

import logging

import pytest

from processors.rules import RuleEngine, RuleError
from schemas.config import RuleSettings
from schemas.records import EventType
from tests.processors.helpers import event_from_payload, fixture_payloads


def rule(name: str, sinks: tuple[str, ...] = ("a",), **kw: object) -> RuleSettings:
    """Return a validated rule."""
    return RuleSettings.model_validate({"name": name, "sinks": sinks, **kw})


def test_object_and_event_types_select_the_expected_fixture_events() -> None:
    """Each rule reaches exactly the captured events of its object and event types."""
    engine = RuleEngine([
        rule("devices", object_types=["dcim.device"]),
        rule("deletes", sinks=("b",), event_types=["object_deleted"]),
        rule("jobs", sinks=("c",), object_types=["extras.script"],
             event_types=["job_completed"]),
    ])
    routed: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for p in fixture_payloads():
        ev = event_from_payload(p)
        for sink in engine.match(ev.object_type, ev.event_type, ev.data).sinks:
            routed[sink].append(ev.object_key)
    assert routed["a"] == ["dcim.device:1", "dcim.device:2", "dcim.device:3", "dcim.device:1",
                           "dcim.device:2", "dcim.device:1", "dcim.device:1", "dcim.device:1",
                           "dcim.device:2", "dcim.device:3", "dcim.device:3", "dcim.device:2"]
    assert routed["b"] == ["ipam.ipaddress:3", "dcim.interface:4", "dcim.device:3",
                           "ipam.ipaddress:2", "dcim.interface:3", "dcim.device:2"]
    assert routed["c"] == ["extras.script:", "extras.script:"]


def test_conditions_pass_exactly_the_expected_events() -> None:
    """A NetBox condition on status.value keeps only active devices' events."""
    engine = RuleEngine([rule("active", object_types=["dcim.device"],
                              conditions={"attr": "status.value", "value": "active"})])
    hits = []
    for p in fixture_payloads():
        ev = event_from_payload(p)
        if engine.match(ev.object_type, ev.event_type, ev.data).sinks:
            hits.append((ev.object_key, p["data"]["status"]["value"]))
    assert hits and all(status == "active" for _, status in hits)
    active = [(event_from_payload(p).object_key) for p in fixture_payloads()
              if p["object_type"] == "dcim.device" and p["data"]["status"]["value"] == "active"]
    assert [k for k, _ in hits] == active


def test_one_delivery_per_sink_with_all_matching_rule_names() -> None:
    """Two rules routing to one sink yield one record carrying both names."""
    engine = RuleEngine([rule("r1"), rule("r2"), rule("r3", sinks=("b",))])
    m = engine.match("dcim.site", EventType.OBJECT_CREATED, "{}")
    assert m.sinks == {"a": ["r1", "r2"], "b": ["r3"]}


def test_raising_condition_is_no_match_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A path through null raises at eval: no match, reported every time, logged once."""
    engine = RuleEngine([rule("tenant", conditions={"attr": "tenant.slug", "value": "acme"}),
                         rule("all", sinks=("b",))])
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        m = engine.match("dcim.device", EventType.OBJECT_UPDATED, '{"tenant": null}')
        assert m.sinks == {"b": ["all"]}
        assert [name for name, _ in m.errors] == ["tenant"]
    assert len([r for r in caplog.records if "tenant" in r.getMessage()]) == 1


def test_invalid_conditions_are_rejected_naming_the_rule() -> None:
    """A ruleset NetBox cannot build fails at load with the rule's name."""
    with pytest.raises(RuleError, match=r"rules\.bad\.conditions"):
        RuleEngine([rule("bad", conditions={"attr": "x", "value": 1, "op": "neq"})])


def test_disabled_rules_and_explain() -> None:
    """explain() says why each rule does or does not match; disabled rules are absent."""
    engine = RuleEngine([
        rule("off", enabled=False),
        rule("sites", object_types=["dcim.site"]),
        rule("deletes", event_types=["object_deleted"]),
        rule("named", conditions={"attr": "name", "value": "x"}),
        rule("broken", conditions={"attr": "missing", "value": 1}),
    ])
    v = {x.rule: x for x in engine.explain("dcim.device", EventType.OBJECT_CREATED,
                                           {"name": "x"})}
    assert "off" not in v
    assert not v["sites"].matched and "object type" in v["sites"].reason
    assert not v["deletes"].matched and "event type" in v["deletes"].reason
    assert v["named"].matched and v["named"].reason == "conditions true"
    assert not v["broken"].matched and "condition raised" in v["broken"].reason


def test_index_only_evaluates_candidate_rules() -> None:
    """With 100 rules on distinct object types, an event is tested against its own only."""
    engine = RuleEngine([rule(f"r{i}", object_types=[f"app.model{i}"],
                              conditions={"attr": "n", "value": i}) for i in range(100)])
    assert len(engine.candidates("app.model7", EventType.OBJECT_CREATED)) == 1
    assert engine.match("app.model7", EventType.OBJECT_CREATED, '{"n": 7}').sinks == {"a": ["r7"]}
