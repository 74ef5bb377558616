"""Tests for producers.normalize: the real NetBox 4.6.8 webhooks, then every other shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers.normalize import NotANetBoxEvent, normalize
from schemas.config import NetBoxSettings
from schemas.identity import source_id
from schemas.records import EventType, NetBoxEvent
from tests.conftest import FIXTURES

WEBHOOKS: list[dict[str, Any]] = [
    json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line
]
NETBOX = NetBoxSettings.model_validate({"id": "nb-test", "version": "4.6.8"})
NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
CANONICAL = {
    "created": EventType.OBJECT_CREATED,
    "updated": EventType.OBJECT_UPDATED,
    "deleted": EventType.OBJECT_DELETED,
    "job_ended": EventType.JOB_COMPLETED,
}


def run(payload: dict[str, Any], raw: str | None = None) -> NetBoxEvent:
    """Normalise ``payload`` whose body text is ``raw`` (default: its own JSON)."""
    return normalize(payload, json.dumps(payload) if raw is None else raw, NETBOX, NOW)


def device_payload(**changes: Any) -> dict[str, Any]:
    """Return a NetBox 4.6 device update with ``changes`` applied (None deletes a key)."""
    payload: dict[str, Any] = {
        "event": "updated",
        "timestamp": "2026-11-22T05:00:31.467913+00:00",
        "object_type": "dcim.device",
        "username": "admin",
        "request_id": "20f27eec-0e61-47ef-a59b-25e6bfc362a2",
        "data": {"id": 7, "url": "/api/dcim/devices/7/", "name": "edge-07"},
        "snapshots": {"prechange": {"status": "planned"}, "postchange": {"status": "active"}},
        "request": {"id": "20f27eec-0e61-47ef-a59b-25e6bfc362a2", "method": "PATCH",
                    "path": "/api/dcim/devices/7/", "user": "admin"},
    }
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


@pytest.mark.parametrize("hook", WEBHOOKS, ids=lambda h: f"{h['seq']}-{h['step'][:20]}")
def test_fixture_normalises(hook: dict[str, Any]) -> None:
    """Every real webhook normalises with the fields its payload implies."""
    body = hook["body"]
    payload = json.loads(body)
    event = normalize(payload, body, NETBOX, NOW)

    assert event.object_type == payload["object_type"]
    assert event.netbox_event == payload["event"]
    assert event.event_type is CANONICAL[payload["event"]]
    if payload["event"] == "job_ended":
        assert event.object_id is None
        assert event.object_key == "extras.script:"
    else:
        assert event.object_id == payload["data"]["id"]
        assert event.object_key == f"{payload['object_type']}:{payload['data']['id']}"
    assert event.message == body  # byte for byte, not re-serialised
    assert event.message.encode("utf-8") == hook["body"].encode("utf-8")
    assert event.source_timestamp == datetime.fromisoformat(payload["timestamp"])
    assert event.source_timestamp.tzinfo is not None
    assert event.ingest_timestamp == NOW
    assert event.username == payload["username"]
    assert event.request_id == payload["request_id"]
    assert event.netbox_id == "nb-test"
    assert event.netbox_version == "4.6.8"
    assert event.ingest_source == "webhook"
    assert event.data is not None and json.loads(event.data) == payload["data"]
    assert event.data == json.dumps(payload["data"], separators=(",", ":"))
    if "snapshots" in payload:
        assert event.snapshots is not None
        assert json.loads(event.snapshots) == payload["snapshots"]
    else:
        assert event.snapshots is None
    assert event.context is None
    assert event.source_id == source_id(
        "nb-test", payload["request_id"], event.object_key, event.event_type.value,
        payload["timestamp"],
    )
    # Deterministic: the same delivery twice (requeue) gets the same id.
    again = normalize(json.loads(body), body, NETBOX, NOW + timedelta(seconds=5))
    assert again.source_id == event.source_id


def test_fixture_source_ids_are_distinct() -> None:
    """Different events (even of one request, or of one object) get different source ids."""
    ids = [normalize(json.loads(h["body"]), h["body"], NETBOX, NOW).source_id for h in WEBHOOKS]
    assert len(set(ids)) == len(WEBHOOKS)
    other = NetBoxSettings.model_validate({"id": "nb-other", "version": "4.6.8"})
    hook = WEBHOOKS[0]
    assert normalize(json.loads(hook["body"]), hook["body"], other, NOW).source_id != ids[0]


def test_fixture_job_failure_log_is_not_a_job_status() -> None:
    """The failed script run's log entry says "failure" (a log level): still job_completed."""
    failed_runs = [h for h in WEBHOOKS if '"status": "failure"' in h["body"]]
    assert failed_runs
    for hook in failed_runs:
        assert normalize(json.loads(hook["body"]), hook["body"], NETBOX, NOW).event_type is (
            EventType.JOB_COMPLETED
        )


def test_netbox_43_model_only_derives_app_label_from_url() -> None:
    """NetBox <= 4.3 sends model only: the app label comes from data.url."""
    payload = device_payload(object_type=None, request=None, model="device")
    payload["data"]["url"] = "/api/dcim/devices/7/"
    event = run(payload)
    assert event.object_type == "dcim.device"
    assert event.object_key == "dcim.device:7"
    assert event.username == "admin"
    assert event.request_id == "20f27eec-0e61-47ef-a59b-25e6bfc362a2"


@pytest.mark.parametrize(("model", "url", "expected"), [
    ("ipaddress", "/api/ipam/ip-addresses/3/", "ipam.ipaddress"),
    ("device", "https://netbox.example.com/api/dcim/devices/7/", "dcim.device"),
    ("device", "/netbox/api/dcim/devices/7/", "dcim.device"),
    ("bgpsession", "/api/plugins/netbox-bgp/session/7/", "netbox_bgp.bgpsession"),
])
def test_model_only_url_variants(model: str, url: str, expected: str) -> None:
    """Relative, absolute, BASE_PATH-prefixed and plugin URLs all yield the app label."""
    payload = device_payload(object_type=None, model=model)
    payload["data"]["url"] = url
    assert run(payload).object_type == expected


def test_netbox_44_object_type_and_model() -> None:
    """NetBox 4.4 sends both; object_type wins."""
    event = run(device_payload(model="device", request=None))
    assert event.object_type == "dcim.device"
    assert event.object_id == 7


def test_netbox_47_request_fields() -> None:
    """NetBox 4.7 has no username/request_id: request.user and request.id are used."""
    payload = device_payload(username=None, request_id=None)
    payload["request"] = {"id": "0b8e9c1e-7c1a-4b7b-9f00-3a5c2b1d4e6f", "method": "PATCH",
                          "path": "/api/dcim/devices/7/", "user": "netops"}
    event = run(payload)
    assert event.username == "netops"
    assert event.request_id == "0b8e9c1e-7c1a-4b7b-9f00-3a5c2b1d4e6f"
    assert event.source_id == source_id(
        "nb-test", "0b8e9c1e-7c1a-4b7b-9f00-3a5c2b1d4e6f", "dcim.device:7", "object_updated",
        "2026-11-22T05:00:31.467913+00:00",
    )


def test_context_kept_and_absent_fields_none() -> None:
    """A plugin context travels as compact JSON; missing snapshots and request give None."""
    payload = device_payload(snapshots=None, username=None, request_id=None, request=None,
                             context={"plugin": {"a": [1, 2]}})
    event = run(payload)
    assert event.context == '{"plugin":{"a":[1,2]}}'
    assert event.snapshots is None
    assert event.username is None and event.request_id is None


def test_message_is_raw_text_not_reserialised() -> None:
    """The raw body (whitespace, key order, escapes) is kept exactly."""
    raw = ('{  "timestamp":"2026-11-22T05:00:31+00:00" ,"event":"created",'
           '"object_type":"dcim.site","data":{"id":1,"name":"caf\\u00e9"}}')
    event = run(json.loads(raw), raw)
    assert event.message == raw
    # The derived fields are compact JSON with non-ASCII text as UTF-8, not escaped.
    assert event.data == '{"id":1,"name":"café"}'


def test_lone_surrogate_stays_encodable() -> None:
    """A lone \\ud800 escape in data is kept escaped, so the Avro UTF-8 encoder accepts it."""
    raw = ('{"event":"created","timestamp":"2026-11-22T05:00:31+00:00",'
           '"object_type":"dcim.site","data":{"id":1,"name":"\\ud800","city":"Zürich"}}')
    event = run(json.loads(raw), raw)
    assert event.data == '{"id":1,"name":"\\ud800","city":"Z\\u00fcrich"}'
    event.data.encode("utf-8")


def test_integers_beyond_64_bits_kept_exactly() -> None:
    """A custom field holding a 30-digit integer keeps every digit in data and snapshots."""
    big = 123456789012345678901234567890
    payload = device_payload(context={"n": -big})
    payload["data"]["custom_fields"] = {"serial": big}
    event = run(payload)
    assert event.data is not None and event.context is not None
    assert json.loads(event.data)["custom_fields"]["serial"] == big
    assert event.context == '{"n":-123456789012345678901234567890}'


@pytest.mark.parametrize(("status", "expected"), [
    ("failed", EventType.JOB_FAILED),
    ("errored", EventType.JOB_ERRORED),
    ({"value": "failed", "label": "Failed"}, EventType.JOB_FAILED),
    ({"value": "errored", "label": "Errored"}, EventType.JOB_ERRORED),
    ("completed", EventType.JOB_COMPLETED),
    ({"value": "completed", "label": "Completed"}, EventType.JOB_COMPLETED),
])
def test_job_ended_with_data_status(status: Any, expected: EventType) -> None:
    """job_ended maps to failed/errored when data.status says so, else completed."""
    payload = {"event": "job_ended", "timestamp": "2026-11-22T05:01:18.646411+00:00",
               "object_type": "core.job", "data": {"id": 12, "status": status}}
    event = run(payload)
    assert event.event_type is expected
    assert event.object_key == "core.job:12"


def test_job_ended_with_job_status_outside_data() -> None:
    """A top-level job or context.job status counts too."""
    base = {"event": "job_ended", "timestamp": "2026-11-22T05:01:18+00:00",
            "object_type": "extras.script", "data": {"log": []}}
    assert run({**base, "job": {"status": "failed"}}).event_type is EventType.JOB_FAILED
    assert run({**base, "context": {"job": {"status": {"value": "errored"}}}}).event_type is (
        EventType.JOB_ERRORED
    )


def test_job_started_and_object_status_untouched() -> None:
    """job_started maps directly; an object's own status "failed" (a device) is not a job status."""
    started = {"event": "job_started", "timestamp": "2026-11-22T05:01:18+00:00",
               "object_type": "extras.script", "data": {"status": "failed"}}
    assert run(started).event_type is EventType.JOB_STARTED
    device = device_payload()
    device["data"]["status"] = {"value": "failed", "label": "Failed"}
    assert run(device).event_type is EventType.OBJECT_UPDATED


@pytest.mark.parametrize(("changes", "reason"), [
    ({"event": None}, "no event"),
    ({"event": 3}, "event is not a string"),
    ({"event": "renamed"}, "unknown event 'renamed'"),
    ({"event": "object_created"}, "unknown event"),
    ({"timestamp": None}, "no timestamp"),
    ({"timestamp": "yesterday"}, "not ISO 8601"),
    ({"timestamp": "2026-11-22T05:00:31.467913"}, "has no timezone"),
    ({"timestamp": 1763787631}, "timestamp is not a string"),
    ({"object_type": "Device"}, "unknown object type 'Device'"),
    ({"object_type": "dcim.device.extra"}, "unknown object type"),
    ({"object_type": "dcim"}, "unknown object type"),
    ({"object_type": ["dcim.device"]}, "object_type is not a string"),
    ({"object_type": None}, "neither object_type nor model"),
    ({"object_type": None, "model": "device", "data": {"id": 7}}, "needs data.url"),
    ({"object_type": None, "model": "device", "data": {"id": 7, "url": "/devices/7"}},
     "cannot derive the app label"),
    ({"data": {"name": "no id"}}, "updated event has no integer data.id"),
    ({"data": {"id": "7"}}, "no integer data.id"),
])
def test_bad_payloads_raise_with_reason(changes: dict[str, Any], reason: str) -> None:
    """Payloads that are not NetBox events raise NotANetBoxEvent naming the problem."""
    payload = device_payload()
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    with pytest.raises(NotANetBoxEvent, match=reason):
        run(payload)


def test_timestamp_offset_normalised_to_utc() -> None:
    """A non-UTC offset is converted; the id still uses the string exactly as sent."""
    ts = "2026-11-22T06:00:31.467913+01:00"
    event = run(device_payload(timestamp=ts))
    assert event.source_timestamp == datetime(2026, 11, 22, 5, 0, 31, 467913, tzinfo=UTC)
    assert event.source_timestamp.utcoffset() == timedelta(0)
    assert event.source_id == source_id("nb-test", "20f27eec-0e61-47ef-a59b-25e6bfc362a2",
                                        "dcim.device:7", "object_updated", ts)


def test_reason_shortens_huge_values() -> None:
    """A huge bogus value is not echoed back whole in the reason."""
    with pytest.raises(NotANetBoxEvent) as info:
        run(device_payload(object_type="x" * 10_000))
    assert len(str(info.value)) < 200


def test_deep_nesting_kept_or_refused_with_a_reason() -> None:
    """Data nested deeper than orjson goes (254) is still stored; deeper than Python can
    encode is refused as not storable, not a crash."""
    deep: Any = [1]
    for _ in range(260):
        deep = [deep]
    payload = device_payload(context={"deep": deep})
    event = run(payload)
    assert event.context is not None and json.loads(event.context) == {"deep": deep}
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(NotANetBoxEvent, match="nested too deeply"):
        run(device_payload(context={"deep": deep}), raw="{}")
