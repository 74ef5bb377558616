"""Regression: the processor's dedup table must not drop a record that is read again because the
processor died after remembering its source_id but before publishing its outputs.

A Faust table write goes to the changelog topic at once; the routed outputs go out only at the
next commit. With commits held back (a long ``commit_interval``), a kill -9 after the changelog
reached the broker leaves exactly that state: the restarted processor restores the ids from the
changelog and reads the same raw records again from the committed offset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from nbstream.kafka_local import LocalBroker
from tests.faults.pipeline import FaultPipeline, Summary, WebhookDestination, make_events

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


async def test_record_reprocessed_after_a_crash_is_not_its_own_duplicate(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Callable[..., FaultPipeline],
    report: Callable[[str, Summary, str], None],
) -> None:
    """Route 20 events without committing, kill -9 the processor once their dedup entries are
    on the changelog, restart it committing normally: all 20 are delivered."""
    p = pipelines(tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook,
                  commit_interval=3600.0)
    p.create_topics()
    p.start_all()
    await p.wait_ingest_ready()
    events = make_events(range(1, 11), 2, p.run)
    posted = await p.post_load(events, workers=4)
    assert all(x.status == 202 for x in posted)

    changelog = f"{p.topics.processor_group()}-dedup-changelog"
    servers = kafka_broker.bootstrap_servers
    probe = Consumer({"bootstrap.servers": servers, "group.id": f"{topic_prefix}probe"})

    def remembered() -> int:
        try:
            meta = probe.list_topics(changelog, timeout=5).topics.get(changelog)
            if meta is None or meta.error is not None:
                return 0
            return sum(probe.get_watermark_offsets(TopicPartition(changelog, i), timeout=5)[1]
                       for i in meta.partitions)
        except KafkaException:  # the topic is new: its leader may not be known yet
            return 0

    try:
        await p.wait_for(lambda: remembered() >= len(events), 120, "dedup changelog entries")
    finally:
        probe.close()
    assert p.routed() == 0  # nothing published: the outputs wait for a commit
    p.kill("process")
    p.update("processor", commit_interval=0.05)
    p.start("process")
    await p.wait_delivered({x.source_id for x in posted if x.source_id}, timeout=120)
    s = p.summarize(posted)
    report("dedup after processor kill -9 before commit", s, "")
    assert s.lost == 0 and s.delivered == len(events)
    assert not s.order_violations
