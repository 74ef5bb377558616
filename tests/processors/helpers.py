"""Builders of NetBoxEvents from the real fixture payloads, and raw-topic in, sink-topic out on
the real broker: shared by processor tests."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Producer

from schemas.identity import object_key, source_id
from schemas.records import EventType, NetBoxEvent
from schemas.serde import make_serde
from tests.e2e.harness import assert_alive

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


def produce(servers: str, topic: str, events: list[NetBoxEvent]) -> None:
    """Publish events to the raw topic, keyed by object key."""
    serde = make_serde(None)
    p = Producer({"bootstrap.servers": servers})
    for ev in events:
        p.produce(topic, key=ev.object_key.encode(),
                  value=serde.encode("NetBoxEvent", ev.to_dict(), topic))
    assert p.flush(30) == 0


def read_source_ids(consumer: Consumer, want: int, procs: list[Any], timeout: float = 40,
                    grace: float = 3) -> list[str]:
    """Read sink records until ``want`` arrived (or ``timeout``), then ``grace`` seconds more
    so that an extra (duplicate) record would be seen; return their source ids."""
    serde = make_serde(None)
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert_alive(procs)
        if len(got) >= want:
            deadline = min(deadline, time.monotonic() + grace)
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(str(serde.decode("SinkRecord", msg.value())["source_id"]))
    return got
