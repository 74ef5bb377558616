"""Tests for producers.kafka_producer against the real broker (and against no broker)."""

from __future__ import annotations

import asyncio

import pytest

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from producers.kafka_producer import (
    KafkaProducer,
    ProduceError,
    RecordTooLargeError,
    producer_config,
)
from schemas.topics import Topics
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.kafka


async def test_produce_acknowledged_and_ready(kafka_broker: LocalBroker, topic_prefix: str
                                              ) -> None:
    """produce() returns after the ack; ready() is true once the raw topic exists."""
    settings = make_settings(kafka_broker, topic_prefix)
    raw = Topics(topic_prefix).raw
    producer = KafkaProducer.from_settings(settings)
    try:
        assert await producer.ready() is False  # broker up, topic not created yet
        ensure_topics(settings)
        assert await producer.ready() is False  # cached for about a second
        await asyncio.sleep(1.05)
        assert await producer.ready() is True
        await asyncio.gather(*(producer.produce(raw, b"k", b"v%d" % i, [("h", b"1")])
                               for i in range(50)))
    finally:
        assert await asyncio.to_thread(producer.close, 5) == 0


def test_config_keeps_guarantees_and_passes_client_settings_through(
        kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """kafka.client reaches the producer and may tune it, but cannot weaken the guarantees."""
    client = {"security.protocol": "PLAINTEXT", "linger.ms": "7", "enable.idempotence": "false",
              "acks": "1"}
    settings = make_settings(kafka_broker, topic_prefix, ingest={"produce_timeout": 2.5},
                             kafka={"client": client})
    conf = producer_config(settings)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["allow.auto.create.topics"] is False
    assert conf["message.timeout.ms"] == 2500
    assert conf["security.protocol"] == "PLAINTEXT"
    assert conf["linger.ms"] == "7"
    assert conf["compression.type"] == "lz4"
    assert conf["message.max.bytes"] == 8 * 1024 * 1024
    assert conf["bootstrap.servers"] == kafka_broker.bootstrap_servers


async def test_record_too_large(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """A record over message.max.bytes raises RecordTooLargeError, not retriable."""
    settings = make_settings(kafka_broker, topic_prefix)
    producer = KafkaProducer(producer_config(settings, **{"message.max.bytes": 1000}),
                             ready_topic=Topics(topic_prefix).raw, timeout=5)
    try:
        with pytest.raises(RecordTooLargeError) as info:
            await producer.produce(Topics(topic_prefix).raw, b"k", b"x" * 5000)
        assert info.value.retriable is False
    finally:
        await asyncio.to_thread(producer.close, 1)


async def test_no_broker_times_out_and_full_queue_fails(kafka_broker: LocalBroker,
                                                        topic_prefix: str) -> None:
    """Without a broker, produce fails retriably at the timeout; a full queue fails at once."""
    settings = make_settings(kafka_broker, topic_prefix,
                             kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                             ingest={"produce_timeout": 1.0})
    producer = KafkaProducer(
        producer_config(settings, **{"queue.buffering.max.messages": 1}),
        ready_topic=Topics(topic_prefix).raw, timeout=1.0, probe_timeout=0.5,
    )
    try:
        pending = asyncio.ensure_future(producer.produce("t", b"k", b"first"))
        await asyncio.sleep(0)
        with pytest.raises(ProduceError) as full:
            await producer.produce("t", b"k", b"second")
        assert full.value.retriable is True
        assert full.value.code == "_QUEUE_FULL"
        with pytest.raises(ProduceError) as timed_out:
            await pending
        assert timed_out.value.retriable is True
        assert timed_out.value.code == "_MSG_TIMED_OUT"
        assert await producer.ready() is False
    finally:
        await asyncio.to_thread(producer.close, 1)
