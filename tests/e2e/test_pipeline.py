"""End to end on the real broker: captured NetBox webhooks -> ingest -> processor -> webhook sink
-> a real HTTP receiver, each stage its own ``nbstream`` process."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.identity import egress_id
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import (
    assert_alive,
    e2e_base,
    nbstream_processes,
    receiver_server,
    signature_ok,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

SINK_SECRET = "receiver-secret"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CANONICAL = {"created": "object_created", "updated": "object_updated",
             "deleted": "object_deleted", "job_ended": "job_completed"}


def captured() -> list[dict[str, Any]]:
    """Return the captured webhook requests in arrival order."""
    return [json.loads(line) for line in FIXTURES.read_text().splitlines()]


def object_key(payload: dict[str, Any]) -> str:
    """Return the object key nbstream derives for a payload."""
    data = payload.get("data") or {}
    return f"{payload['object_type']}:{data.get('id', '') if isinstance(data, dict) else ''}"


def test_captured_webhooks_flow_to_webhook_sinks(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """Every captured payload, posted with its real signature, is delivered once per sink, in
    per-object order, as the documented envelope, signed; conditions pass exactly the expected
    events."""
    ingest_port = free_port()
    with receiver_server() as (receiver, port):
        config = {
            **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
            "sinks": {
                "all": {"type": "webhook", "payload_url": f"http://127.0.0.1:{port}/all",
                        "secret": SINK_SECRET},
                "active": {"type": "webhook", "payload_url": f"http://127.0.0.1:{port}/active",
                           "body": "netbox"},
            },
            "rules": [
                {"name": "everything", "sinks": ["all"],
                 "event_types": ["object_created", "object_updated", "object_deleted",
                                 "job_completed"]},
                {"name": "active-devices", "sinks": ["active", "all"],
                 "object_types": ["dcim.device"],
                 "conditions": {"and": [{"attr": "status.value", "value": "active"}]}},
            ],
        }
        ensure_topics(parse_settings(config, env={}))
        with nbstream_processes(config, tmp_path, ["ingest"], ["process"], ["sink", "all"],
                                ["sink", "active"], ingest_port=ingest_port) as procs:
            requests = captured()
            with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
                for req in requests:
                    headers = {k: v for k, v in req["headers"]
                               if k in ("Content-Type", "X-Hook-Signature")}
                    r = client.post("/webhook", content=req["body"].encode(), headers=headers)
                    assert r.status_code == 202, r.text
            payloads = [json.loads(r["body"]) for r in requests]
            active = [p for p in payloads if p["object_type"] == "dcim.device"
                      and p["data"]["status"]["value"] == "active"]
            receiver.wait_for("/all", len(payloads), procs=procs)
            receiver.wait_for("/active", len(active), procs=procs)
            time.sleep(1.0)  # anything extra (a duplicate) would arrive now
            delivered_all = receiver.by_path("/all")
            delivered_active = receiver.by_path("/active")
            assert_alive(procs)

    # exactly one delivery per (event, sink)
    assert len(delivered_all) == len(payloads)
    assert len(delivered_active) == len(active)
    envelopes = [d.json() for d in delivered_all]
    assert Counter(e["egress_id"] for e in envelopes).most_common(1)[0][1] == 1

    # the envelope: fields, types, and the original payload unchanged
    by_body = {json.dumps(p, sort_keys=True): p for p in payloads}
    for d, env in zip(delivered_all, envelopes, strict=True):
        assert set(env) == {"version", "source_id", "source_timestamp", "source_type",
                            "source_type_docs", "netbox_id", "netbox_version",
                            "egress_environment", "egress_id", "egress_timestamp",
                            "egress_version", "message"}
        assert env["version"] == 1
        assert UUID.match(env["source_id"]) and UUID.match(env["egress_id"])
        assert env["egress_id"] == egress_id(env["source_id"], "all")
        assert TS.match(env["source_timestamp"]) and TS.match(env["egress_timestamp"])
        assert env["egress_timestamp"] >= env["source_timestamp"]
        assert (env["netbox_id"], env["netbox_version"], env["egress_environment"]) == (
            "nb-e2e", "4.6.8", "e2e")
        original = by_body[json.dumps(env["message"], sort_keys=True)]
        assert env["message"] == original
        assert env["source_type"] == CANONICAL[original["event"]]
        assert env["source_type"] in env["source_type_docs"]
        assert signature_ok(d.body, SINK_SECRET, d.headers.get("X-Hook-Signature"))
        assert d.headers["X-NBStream-Egress-Id"] == env["egress_id"]
    assert sorted(json.dumps(e["message"], sort_keys=True) for e in envelopes) == sorted(by_body)

    # per-object order: each object's events arrive in the order NetBox sent them
    def per_key(items: list[dict[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in items:
            out.setdefault(object_key(p), []).append(p["timestamp"])
        return out

    assert per_key([e["message"] for e in envelopes]) == per_key(payloads)

    # the "netbox" body sends NetBox's own payload bytes; the condition passed only active ones
    assert delivered_active
    assert all(d.json()["data"]["status"]["value"] == "active" for d in delivered_active)
    assert per_key([d.json() for d in delivered_active]) == per_key(active)
    raw_bodies = {r["body"] for r in captured()}
    assert all(d.body.decode() in raw_bodies for d in delivered_active)
    assert "X-Hook-Signature" not in delivered_active[0].headers
