"""Builders of NetBoxEvents from the real fixture payloads, shared by processor tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from schemas.identity import object_key, source_id
from schemas.records import EventType, NetBoxEvent

_EVENTS = {"created": EventType.OBJECT_CREATED, "updated": EventType.OBJECT_UPDATED,
           "deleted": EventType.OBJECT_DELETED, "job_ended": EventType.JOB_COMPLETED}


def fixture_payloads() -> list[dict[str, Any]]:
    """Return the parsed bodies of the captured NetBox 4.6.8 webhooks, in arrival order."""
    from tests.conftest import FIXTURES

    return [json.loads(json.loads(line)["body"]) for line in FIXTURES.read_text().splitlines()]


def event_from_payload(p: dict[str, Any], netbox_id: str = "nb-test") -> NetBoxEvent:
    """Return the NetBoxEvent ingest would publish for payload ``p`` (simplified, no checks)."""
    data = p.get("data")
    oid = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), int) else None
    key = object_key(p["object_type"], oid)
    etype = _EVENTS[p["event"]]
    return NetBoxEvent(
        source_id=source_id(netbox_id, p.get("request_id"), key, etype.value, p["timestamp"]),
        source_timestamp=datetime.fromisoformat(p["timestamp"]),
        ingest_timestamp=datetime.now(UTC),
        event_type=etype,
        netbox_event=p["event"],
        object_type=p["object_type"],
        object_id=oid,
        object_key=key,
        netbox_id=netbox_id,
        netbox_version="4.6.8",
        message=json.dumps(p),
        username=p.get("username"),
        request_id=p.get("request_id"),
        data=json.dumps(data) if data is not None else None,
        snapshots=json.dumps(p["snapshots"]) if "snapshots" in p else None,
    )
