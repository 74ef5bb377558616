"""The processor's batch publisher on the real broker: where outputs land, in what order, and
what a batch that cannot be stored reports."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from nbstream.kafka_local import LocalBroker
from processors.publisher import KafkaPublisher, Output, PublishError, publisher_config
from tests.conftest import make_settings

pytestmark = pytest.mark.kafka

PARTITIONS = 6


def create_topic(servers: str, name: str) -> None:
    """Create ``name`` with PARTITIONS partitions."""
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(30)


def read_all(servers: str, topic: str, want: int) -> list[tuple[int, bytes, bytes]]:
    """Return (partition, key, value) of the first ``want`` records of ``topic``."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "read-all",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: list[tuple[int, bytes, bytes]] = []
    try:
        for _ in range(60):
            for m in consumer.consume(want, 0.5):
                if m.error() is None:
                    got.append((m.partition(), m.key(), m.value()))
            if len(got) >= want:
                break
    finally:
        consumer.close()
    return got


async def test_batches_land_on_the_key_partition_in_order(
    kafka_broker: LocalBroker, topic_prefix: str
) -> None:
    """Two batches of 10 objects x 3 versions: each key's records are on the partition Faust's
    (and Java's) murmur2 partitioner picks for it, in publish order; an explicit partition (a
    table changelog record) is kept."""
    servers = kafka_broker.bootstrap_servers
    topic, changelog = f"{topic_prefix}out", f"{topic_prefix}changelog"
    create_topic(servers, topic)
    create_topic(servers, changelog)
    publisher = KafkaPublisher(publisher_config(make_settings(kafka_broker, topic_prefix)))
    try:
        batches = [[Output(topic, f"dcim.device:{i}".encode(), f"{i}-v{v}".encode(),
                           [("nbstream-source-id", b"x")]) for v in (b, b + 1) for i in range(10)]
                   for b in (0, 2)]
        batches[0].append(Output(changelog, b"k", b"1", [], 4))
        delivered = [await publisher.publish(batch) for batch in batches]
        for fut in delivered:
            await fut
    finally:
        publisher.close(timeout=10)
    got = read_all(servers, topic, 40)
    murmur2 = DefaultPartitioner()
    for i in range(10):
        key = f"dcim.device:{i}".encode()
        mine = [(p, v) for p, k, v in got if k == key]
        assert [v for _, v in mine] == [f"{i}-v{v}".encode() for v in range(4)]
        assert {p for p, _ in mine} == {murmur2(key, list(range(PARTITIONS)),
                                                list(range(PARTITIONS)))}
    assert read_all(servers, changelog, 1) == [(4, b"k", b"1")]


async def test_a_batch_that_cannot_be_stored_fails(
    kafka_broker: LocalBroker, topic_prefix: str
) -> None:
    """Outputs to a topic that does not exist time out: the batch's future fails with
    PublishError, so its records are never acknowledged."""
    settings = make_settings(kafka_broker, topic_prefix)
    config = {**publisher_config(settings), "message.timeout.ms": 1000}
    publisher = KafkaPublisher(config)
    try:
        delivered = await publisher.publish([Output(f"{topic_prefix}missing", b"k", b"v", [])])
        with pytest.raises(PublishError, match="output not stored"):
            await delivered
    finally:
        publisher.close(timeout=1)
