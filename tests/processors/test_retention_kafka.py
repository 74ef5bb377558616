"""The processor comes back after the broker's retention removed records it had not read: it
resumes at the partition's first offset, routes what is left, logs the loss and commits to
the end instead of stalling behind the missing offsets."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.conftest import free_port
from tests.e2e.harness import assert_alive, nbstream_processes
from tests.processors.helpers import event_from_payload, fixture_payloads, produce, read_source_ids

pytestmark = pytest.mark.kafka


def test_processor_resumes_past_records_removed_by_retention(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """30 events; the group's committed offset is 5; records below 20 are deleted. The 15 lost
    offsets are logged and counted."""
    servers = kafka_broker.bootstrap_servers
    web_port = free_port()
    config = {
        "kafka": {"bootstrap_servers": servers, "topic_prefix": topic_prefix, "partitions": 1},
        "processor": {"data_dir": str(tmp_path / "proc"), "web_port": web_port},
        "sinks": {"out": {"type": "file", "path": str(tmp_path / "unused.jsonl")}},
        "rules": [{"name": "all", "sinks": ["out"]}],
    }
    ensure_topics(parse_settings(config, env={}))
    topics = Topics(topic_prefix)
    payload = fixture_payloads()[0]
    events = [event_from_payload(payload, netbox_id=f"nb-{i}") for i in range(30)]
    produce(servers, topics.raw, events)
    raw = TopicPartition(topics.raw, 0)
    group = Consumer({"bootstrap.servers": servers, "group.id": topics.processor_group()})
    group.commit(offsets=[TopicPartition(topics.raw, 0, 5)], asynchronous=False)
    admin = AdminClient({"bootstrap.servers": servers})
    deleted = admin.delete_records([TopicPartition(topics.raw, 0, 20)])
    assert deleted[raw].result(30).low_watermark == 20
    reader = Consumer({"bootstrap.servers": servers, "group.id": f"{topic_prefix}reader",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([topics.sink("out")])
    try:
        with nbstream_processes(config, tmp_path, ["process"]) as procs:
            routed = read_source_ids(reader, 10, procs)
            assert routed == [e.source_id for e in events[20:]]
            deadline = time.monotonic() + 30
            while group.committed([raw], timeout=5)[0].offset != 30:
                assert_alive(procs)
                assert time.monotonic() < deadline, "the processor stalled behind offset 20"
                time.sleep(0.5)
            metrics = httpx.get(f"http://127.0.0.1:{web_port}/metrics", timeout=10).text
            assert "nbstream_processor_offsets_lost_total 15.0" in metrics
        log = Path(procs[0].log_path).read_text()  # type: ignore[attr-defined]
        assert "offsets 5-19 were removed by the broker" in log
    finally:
        reader.close()
        group.close()
