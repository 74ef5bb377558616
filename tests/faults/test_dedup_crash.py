"""The processor's outputs and its dedup table under a crash while outputs cannot be stored.

Regression: the dedup table must not drop a record that is read again because the processor
died after remembering its source_id but before the record's outputs were stored. The route
agent publishes a batch's changelog records and outputs together; with the sink topic missing,
the changelog records are stored and the outputs are not, so the batch is never acknowledged.
A kill -9 then leaves exactly that state: the restarted processor restores the ids from the
changelog and reads the same raw records again from the committed offset.

And: a processor whose outputs cannot be stored stops without committing its input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from nbstream.kafka_local import LocalBroker
from tests.faults.pipeline import (
    FaultPipeline,
    Posted,
    Summary,
    WebhookDestination,
    make_events,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


def end_offsets(servers: str, topic: str) -> int:
    """Return the sum of ``topic``'s end offsets (0 while it does not exist or has no leader)."""
    probe = Consumer({"bootstrap.servers": servers, "group.id": "probe"})
    try:
        meta = probe.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(probe.get_watermark_offsets(TopicPartition(topic, i), timeout=5)[1]
                   for i in meta.partitions)
    except KafkaException:  # the topic is new: its leader may not be known yet
        return 0
    finally:
        probe.close()


def raw_committed(p: FaultPipeline) -> int:
    """Return the sum of the processor group's committed offsets on the raw topic."""
    return sum(max(offset, 0) for offset in p.progress(p.topics.raw, p.topics.processor_group())[1])


async def restore_and_deliver(p: FaultPipeline, posted: list[Posted]) -> Summary:
    """Create the missing sink topic again, (re)start the processor and the sink worker, and
    return the summary once every posted event was delivered."""
    p.create_topics()
    p.start("process")
    p.start("sink")
    await p.wait_delivered({x.source_id for x in posted if x.source_id}, timeout=120)
    return p.summarize(posted)


def delete_topic(servers: str, topic: str) -> None:
    """Delete ``topic`` (the call returns once the controller accepted it)."""
    admin = AdminClient({"bootstrap.servers": servers})
    admin.delete_topics([topic])[topic].result(30)


async def test_record_reprocessed_after_a_crash_is_not_its_own_duplicate(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Callable[..., FaultPipeline],
    report: Callable[[str, Summary, str], None],
) -> None:
    """Route 20 events whose outputs cannot be stored, kill -9 the processor once their dedup
    entries are on the changelog, create the sink topic, restart: all 20 are delivered."""
    p = pipelines(tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    servers = kafka_broker.bootstrap_servers
    p.create_topics()
    delete_topic(servers, p.topics.sink(p.sink))
    p.start("ingest")
    p.start("process")
    await p.wait_ingest_ready()
    events = make_events(range(1, 11), 2, p.run)
    posted = await p.post_load(events, workers=4)
    assert all(x.status == 202 for x in posted)

    changelog = f"{p.topics.processor_group()}-dedup-changelog"
    await p.wait_for(lambda: end_offsets(servers, changelog) >= len(events), 120,
                     "dedup changelog entries")
    p.kill("process")
    assert raw_committed(p) == 0
    s = await restore_and_deliver(p, posted)
    report("dedup after processor kill -9 with outputs not stored", s, "")
    assert s.lost == 0 and s.delivered == len(events)
    assert not s.order_violations


async def test_processor_stops_without_committing_when_outputs_cannot_be_stored(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Callable[..., FaultPipeline],
) -> None:
    """The sink topic is missing and outputs time out after 3 s: the processor exits with an
    error that says so, and no raw offset was committed; restarted with the topic back, every
    event is delivered."""
    p = pipelines(tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    servers = kafka_broker.bootstrap_servers
    p.create_topics()
    delete_topic(servers, p.topics.sink(p.sink))
    p.update("kafka", client={**p.config["kafka"]["client"], "message.timeout.ms": "3000"})
    p.start("ingest")
    p.start("process")
    await p.wait_ingest_ready()
    posted = await p.post_load(make_events(range(1, 6), 2, p.run), workers=2)
    assert all(x.status == 202 for x in posted)

    proc = p.stages["process"].proc
    assert proc is not None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert proc.returncode not in (None, 0)
    assert "output not stored" in p.tail("process", 20_000)
    assert raw_committed(p) == 0

    s = await restore_and_deliver(p, posted)
    assert s.lost == 0 and s.delivered == len(posted)
