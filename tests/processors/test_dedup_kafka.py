"""Dedup by source_id on the real broker, across a processor restart (the Faust table's
changelog restores what was routed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.e2e.harness import nbstream_processes
from tests.processors.helpers import event_from_payload, fixture_payloads, produce, read_source_ids

pytestmark = pytest.mark.kafka


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
