"""The provisioned broker serves both client libraries nbstream uses."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from nbstream.kafka_local import LocalBroker


def test_confluent_and_aiokafka_roundtrip(kafka_broker: LocalBroker) -> None:
    """A record written by librdkafka is read by aiokafka (Faust's client) and vice versa."""
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)

    p = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                  "enable.idempotence": True, "acks": "all"})
    p.produce(topic, key=b"k", value=b"from-confluent")
    assert p.flush(30) == 0

    async def aio() -> list[bytes]:
        prod = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all",
                                enable_idempotence=True)
        await prod.start()
        await prod.send_and_wait(topic, b"from-aiokafka", key=b"k")
        await prod.stop()
        cons = AIOKafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap_servers,
                                auto_offset_reset="earliest", group_id="probe-aio")
        await cons.start()
        try:
            got: list[bytes] = []
            async with asyncio.timeout(30):
                while len(got) < 2:
                    for batch in (await cons.getmany(timeout_ms=500)).values():
                        got.extend(m.value for m in batch if m.value is not None)
            return got
        finally:
            await cons.stop()

    assert asyncio.run(aio()) == [b"from-confluent", b"from-aiokafka"]

    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": "probe-ck",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    seen: list[bytes] = []
    for _ in range(60):
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            seen.append(m.value())
        if len(seen) == 2:
            break
    c.close()
    assert seen == [b"from-confluent", b"from-aiokafka"]


def test_running_pid_and_stop_of_an_unstarted_broker(kafka_broker: LocalBroker) -> None:
    """The running broker reports its PID; stop() of a second, unstarted broker is a no-op."""
    assert kafka_broker.running_pid() is not None
    idle = LocalBroker(kafka_broker.data_dir / "never-started")
    assert idle.stop() is False


def test_cluster_ids_starting_with_a_dash_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster id beginning with '-' (1 start in 64) must not be read as an option."""
    from nbstream import kafka_local

    seed = next(u for u in iter(uuid.uuid4, None)
                if kafka_local._kafka_cluster_id(str(u)).startswith("-"))
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: seed)
    broker = LocalBroker(tmp_path)
    (tmp_path / "server.properties").write_text(broker._properties())
    broker._format(kafka_local.install(broker.version, quiet=True))
    assert (tmp_path / "logs" / "meta.properties").exists()
