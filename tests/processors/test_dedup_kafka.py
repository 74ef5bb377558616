"""Dedup by source_id on the real broker, across a processor restart (the Faust table's
changelog restores what was routed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.records import NetBoxEvent
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.e2e.harness import assert_alive, nbstream_processes
from tests.processors.helpers import event_from_payload, fixture_payloads

pytestmark = pytest.mark.kafka


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


def test_repeated_source_id_is_dropped_even_after_restart(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A, A, B -> A, B; restart; A again -> nothing; C -> C."""
    config = {
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                  "topic_prefix": topic_prefix, "partitions": 3},
        "processor": {"data_dir": str(tmp_path / "proc"), "web_port": 0, "dedup_window": 600},
        "sinks": {"out": {"type": "file", "path": str(tmp_path / "unused.jsonl")}},
        "rules": [{"name": "all", "sinks": ["out"]}],
    }
    ensure_topics(parse_settings(config, env={}))
    topics = Topics(topic_prefix)
    a, b, c = (event_from_payload(p) for p in fixture_payloads()[:3])
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                         "group.id": f"{topic_prefix}reader", "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.sink("out")])
    try:
        with nbstream_processes(config, tmp_path, ["process"]) as procs:
            produce(kafka_broker.bootstrap_servers, topics.raw, [a, a, b])
            first = read_source_ids(consumer, 2, procs)
            assert sorted(first) == sorted([a.source_id, b.source_id])
        with nbstream_processes(config, tmp_path, ["process"]) as procs:
            produce(kafka_broker.bootstrap_servers, topics.raw, [a, c])
            second = read_source_ids(consumer, 1, procs)
            assert second == [c.source_id]
    finally:
        consumer.close()
