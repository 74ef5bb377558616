"""SinkRecords for sink tests: from NetBox's captured payloads, or small synthetic ones."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from schemas.identity import egress_id, object_key, source_id
from schemas.records import EventType, SinkRecord
from schemas.serde import make_serde

__all__ = ["fixture_payloads", "fixture_records", "produce_records", "record_from_payload",
           "synthetic_record"]

_EVENTS = {"created": EventType.OBJECT_CREATED, "updated": EventType.OBJECT_UPDATED,
           "deleted": EventType.OBJECT_DELETED, "job_ended": EventType.JOB_COMPLETED}
DOCS = "https://example.invalid/docs/event-types.md#{}"


def fixture_payloads() -> list[str]:
    """Return the raw bodies of the captured NetBox 4.6.8 webhooks, in arrival order."""
    from tests.conftest import FIXTURES

    return [json.loads(line)["body"] for line in FIXTURES.read_text().splitlines()]


def record_from_payload(body: str, sink: str, netbox_id: str = "nb-test") -> SinkRecord:
    """Return the SinkRecord the processor would route to ``sink`` for NetBox payload ``body``."""
    p: dict[str, Any] = json.loads(body)
    raw = p.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    oid = data.get("id") if isinstance(data.get("id"), int) else None
    key = object_key(p["object_type"], oid)
    etype = _EVENTS[p["event"]]
    sid = source_id(netbox_id, p.get("request_id"), key, etype.value, p["timestamp"])
    return SinkRecord(
        source_id=sid,
        source_timestamp=datetime.fromisoformat(p["timestamp"]),
        source_type=etype,
        source_type_docs=DOCS.format(etype.value),
        netbox_id=netbox_id,
        netbox_version="4.6.8",
        egress_environment="test",
        egress_id=egress_id(sid, sink),
        egress_version="0.1.0",
        sink=sink,
        object_type=p["object_type"],
        object_key=key,
        message=body,
        rules=("all",),
    )


def fixture_records(sink: str) -> list[SinkRecord]:
    """Return one SinkRecord per captured payload, in arrival order."""
    return [record_from_payload(b, sink) for b in fixture_payloads()]


def synthetic_record(obj: int, seq: int, sink: str, object_type: str = "dcim.device") -> SinkRecord:
    """Return update number ``seq`` of object ``obj``: a small NetBox 4.6-shaped payload."""
    ts = datetime(2026, 11, 22, 10, 30, tzinfo=UTC) + timedelta(seconds=seq, microseconds=obj)
    payload = {
        "event": "updated", "timestamp": ts.isoformat(), "object_type": object_type,
        "username": "admin", "request_id": f"req-{obj}-{seq}",
        "data": {"id": obj, "name": f"dev-{obj}", "seq": seq, "status": {"value": "active"}},
        "snapshots": {"prechange": {"seq": seq - 1}, "postchange": {"seq": seq}},
    }
    body = json.dumps(payload)
    return record_from_payload(body, sink)


def produce_records(producer: Producer, topic: str, records: Iterable[SinkRecord]) -> None:
    """Write ``records`` to sink topic ``topic`` (Avro, keyed by object, as the processor
    does) and wait until the broker has them."""
    serde = make_serde(None)
    for r in records:
        producer.produce(topic, key=r.object_key.encode(),
                         value=serde.encode("SinkRecord", r.to_dict(), topic))
    assert producer.flush(30) == 0
