"""The sink runner against the real broker: order, commits, retries, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import Settings
from schemas.records import DeadLetter, SinkRecord
from schemas.serde import make_serde
from schemas.topics import Topics
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
)
from sinks.retry import RetryPolicy
from sinks.runner import H_ERROR, H_OFFSET, H_PARTITION, H_TOPIC, SinkRunner
from sinks.webhook import WebhookSettings, WebhookSink
from tests.conftest import make_settings
from tests.sinks.receiver import Receiver, Response
from tests.sinks.records import fixture_records, synthetic_record

pytestmark = pytest.mark.kafka

FAST = RetryPolicy(initial_delay=0.05, multiplier=2.0, max_delay=0.2, jitter=0.0,
                   max_attempts=4, max_elapsed=10.0)
Behaviour = Callable[[Sequence[SinkRecord]], Awaitable[None]]


class RecordingSink(Sink[SinkOptions]):
    """An in-test sink: records what it delivers; ``behaviour`` may raise or block first."""

    type_name = "recording"
    Settings = SinkOptions

    def __init__(self, name: str, behaviour: Behaviour | None = None) -> None:
        super().__init__(name, SinkOptions(), SinkContext(environment="test", sink=name))
        self.behaviour = behaviour
        self.delivered: list[SinkRecord] = []
        self.batch_sizes: list[int] = []
        self.calls = 0
        self.closed = False

    async def open(self) -> None:
        """Nothing to connect to."""

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Run the behaviour, then record the batch as delivered."""
        self.calls += 1
        self.batch_sizes.append(len(records))
        if self.behaviour is not None:
            await self.behaviour(records)
        self.delivered.extend(records)

    async def close(self) -> None:
        """Remember that the runner closed the sink."""
        self.closed = True


def setup(broker: LocalBroker, prefix: str, name: str, **sink: Any) -> Settings:
    """Return settings with sink ``name`` and create its topics."""
    settings = make_settings(broker, prefix, sinks={name: {"type": "recording", **sink}})
    ensure_topics(settings)
    return settings


def produce(settings: Settings, name: str, items: Sequence[SinkRecord | bytes]) -> None:
    """Write records (Avro) or raw bytes to sink ``name``'s topic, keyed by object."""
    topic = Topics(settings.kafka.topic_prefix).sink(name)
    serde = make_serde(None)
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
    key = b"dcim.device:1"
    for item in items:
        if isinstance(item, SinkRecord):
            key = item.object_key.encode()
            producer.produce(topic, serde.encode("SinkRecord", item.to_dict(), topic), key)
        else:
            producer.produce(topic, item, key)  # poison next to the previous record
    assert producer.flush(30) == 0


def committed(settings: Settings, name: str) -> dict[int, int]:
    """Return the sink group's committed offset per partition (0 when none is committed)."""
    topics = Topics(settings.kafka.topic_prefix)
    c = Consumer(settings.kafka.librdkafka(**{"group.id": topics.sink_group(name)}))
    try:
        tps = [TopicPartition(topics.sink(name), p) for p in range(settings.kafka.partitions)]
        return {tp.partition: max(tp.offset, 0) for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Return the log end offset per partition of ``topic``."""
    c = Consumer(settings.kafka.librdkafka(**{"group.id": "probe"}))
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
                for p in range(settings.kafka.partitions)}
    finally:
        c.close()


def read_all(settings: Settings, topic: str, expected: int, partitions: int = 0) -> list[Any]:
    """Return ``expected`` messages of ``topic`` read from the beginning (fail after 20 s)."""
    c = Consumer(settings.kafka.librdkafka(**{"group.id": "probe", "enable.auto.commit": False}))
    count = partitions or settings.kafka.partitions
    c.assign([TopicPartition(topic, p, 0) for p in range(count)])
    out: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < expected and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    assert len(out) == expected, f"{len(out)} of {expected} records on {topic}"
    return out


async def run_until(runner: SinkRunner, done: Callable[[], bool], timeout: float = 30) -> None:
    """Run ``runner`` until ``done()`` holds, then stop it and wait for a clean exit."""
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if task.done():
                task.result()
                raise AssertionError("runner exited early")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.02)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 20)


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    """Return a metric sample (0 when absent)."""
    return registry.get_sample_value(metric, labels) or 0.0


def per_key(records: Sequence[SinkRecord]) -> dict[str, list[str]]:
    """Return egress ids grouped by object key, in order."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.object_key, []).append(r.egress_id)
    return out


async def test_delivers_in_order_and_commits(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """Every record is delivered once, each object's in order; the group commits them all."""
    settings = setup(kafka_broker, topic_prefix, "rec", batch_size=7)
    records = [synthetic_record(obj, seq, "rec") for seq in range(1, 11) for obj in range(1, 7)]
    produce(settings, "rec", records)
    sink = RecordingSink("rec")
    registry = CollectorRegistry()
    runner = SinkRunner("rec", sink, settings, retry=FAST, registry=registry)
    await run_until(runner, lambda: len(sink.delivered) >= len(records))
    assert per_key(sink.delivered) == per_key(records)
    assert len(sink.delivered) == len(records) and sink.closed
    topic = Topics(topic_prefix).sink("rec")
    assert committed(settings, "rec") == end_offsets(settings, topic)
    assert sample(registry, "nbstream_sink_delivered_total", sink="rec") == len(records)
    assert sample(registry, "nbstream_sink_batch_size_count", sink="rec") == sink.calls
    assert max(sink.batch_sizes) <= 7 and sum(sink.batch_sizes) == len(records)


async def test_webhook_retries_503_then_delivers(
    kafka_broker: LocalBroker, topic_prefix: str, receiver: Receiver
) -> None:
    """A receiver answering 503 twice then 200: everything delivered in order, retries counted."""
    settings = setup(kafka_broker, topic_prefix, "hooks")
    records = fixture_records("hooks")
    produce(settings, "hooks", records)
    receiver.script = lambda _r, n: Response(503, headers={"Retry-After": "0"}) if n < 2 \
        else Response()
    sink = WebhookSink("hooks", WebhookSettings(payload_url=receiver.url()),
                       SinkContext(environment="test", sink="hooks"))
    registry = CollectorRegistry()
    runner = SinkRunner("hooks", sink, settings, retry=FAST, registry=registry)
    await run_until(runner, lambda: len(receiver.delivered()) >= len(records))
    got = receiver.delivered()
    assert sorted(r.egress_id for r in got) == sorted(r.egress_id for r in records)
    ordered = sorted(got, key=lambda r: r.started)
    assert {k: [r.egress_id for r in ordered if r.key == k] for k in per_key(records)} == \
        per_key(records)
    assert sample(registry, "nbstream_sink_retried_total", sink="hooks") >= 2
    assert sample(registry, "nbstream_sink_failed_total", sink="hooks",
                  error_class="retryable") >= 2
    assert sample(registry, "nbstream_sink_dead_lettered_total", sink="hooks") == 0
    assert committed(settings, "hooks") == end_offsets(settings, Topics(topic_prefix).sink("hooks"))


async def test_webhook_400_dead_letters_and_moves_on(
    kafka_broker: LocalBroker, topic_prefix: str, receiver: Receiver
) -> None:
    """Records the receiver rejects with 400 land in the DLQ with headers; the rest deliver."""
    settings = setup(kafka_broker, topic_prefix, "hooks")
    records = fixture_records("hooks")
    rejected = {records[3].egress_id, records[10].egress_id}
    produce(settings, "hooks", records)
    receiver.script = lambda req, _n: Response(400 if req.egress_id in rejected else 200,
                                               body=b"invalid device")
    sink = WebhookSink("hooks", WebhookSettings(payload_url=receiver.url()),
                       SinkContext(environment="test", sink="hooks"))
    registry = CollectorRegistry()
    runner = SinkRunner("hooks", sink, settings, retry=FAST, registry=registry)
    await run_until(runner, lambda: sample(
        registry, "nbstream_sink_dead_lettered_total", sink="hooks") >= 2 and len(
        receiver.delivered()) >= len(records) - 2)
    assert {r.egress_id for r in receiver.delivered()} == {r.egress_id for r in records} - rejected

    topics = Topics(topic_prefix)
    serde = make_serde(None)
    for m in read_all(settings, topics.dlq("hooks"), 2):
        letter = DeadLetter.from_dict(serde.decode("DeadLetter", m.value()))
        assert letter.record.egress_id in rejected
        assert m.key() == letter.record.object_key.encode()
        assert (letter.error_class, letter.error_type, letter.attempts) == (
            "permanent", "PermanentError", 1)
        assert "HTTP 400" in letter.error_message and "invalid device" in letter.error_message
        assert letter.first_failure == letter.last_failure and letter.first_failure.tzinfo
        headers = dict(m.headers())
        assert headers[H_TOPIC] == topics.sink("hooks").encode()
        origin = read_all(settings, topics.sink("hooks"), len(records))
        source = next(o for o in origin if o.partition() == int(headers[H_PARTITION])
                      and o.offset() == int(headers[H_OFFSET]))
        assert str(serde.decode("SinkRecord", source.value())["egress_id"]) == \
            letter.record.egress_id
    assert committed(settings, "hooks") == end_offsets(settings, topics.sink("hooks"))


async def test_poison_record_goes_to_invalid_and_the_rest_continues(
    kafka_broker: LocalBroker, topic_prefix: str
) -> None:
    """A record that is not Avro is copied to the invalid topic with error headers, and skipped."""
    settings = setup(kafka_broker, topic_prefix, "rec")
    before = [synthetic_record(1, seq, "rec") for seq in range(1, 4)]
    after = [synthetic_record(1, seq, "rec") for seq in range(4, 7)]
    produce(settings, "rec", [*before, b"\x00not avro at all", *after])
    sink = RecordingSink("rec")
    registry = CollectorRegistry()
    runner = SinkRunner("rec", sink, settings, retry=FAST, registry=registry)
    await run_until(runner, lambda: len(sink.delivered) >= 6)
    assert [r.egress_id for r in sink.delivered] == [r.egress_id for r in before + after]
    topics = Topics(topic_prefix)
    (bad,) = read_all(settings, topics.invalid, 1, partitions=1)
    headers = dict(bad.headers())
    assert bad.value() == b"\x00not avro at all" and bad.key() == b"dcim.device:1"
    assert headers[H_TOPIC] == topics.sink("rec").encode()
    assert headers[H_OFFSET] == b"3" and b"SerdeError" in headers[H_ERROR]
    assert sample(registry, "nbstream_sink_invalid_total", sink="rec") == 1
    assert committed(settings, "rec") == end_offsets(settings, topics.sink("rec"))


async def test_exhausted_retries_dead_letter_as_retryable(
    kafka_broker: LocalBroker, topic_prefix: str
) -> None:
    """A record that keeps failing retryably is dead-lettered after max_attempts; order holds."""
    settings = setup(kafka_broker, topic_prefix, "rec")
    records = [synthetic_record(1, seq, "rec") for seq in range(1, 5)]
    produce(settings, "rec", records)
    doomed = records[1].egress_id

    async def behaviour(batch: Sequence[SinkRecord]) -> None:
        failed: dict[int, RetryableError | PermanentError] = {
            i: RetryableError("throttled", retry_after=0.01)
            for i, r in enumerate(batch) if r.egress_id == doomed}
        if failed:
            # The records after the failed one are reported too, as an ordered sink must.
            first = min(failed)
            failed.update({i: failed[first] for i in range(first, len(batch))})
            delivered = [r for i, r in enumerate(batch) if i not in failed]
            sink.delivered.extend(delivered)
            raise PartialBatchError(failed)

    sink = RecordingSink("rec", behaviour)
    registry = CollectorRegistry()
    runner = SinkRunner("rec", sink, settings, retry=FAST, registry=registry)
    await run_until(runner, lambda: len(sink.delivered) >= 3)
    assert [r.egress_id for r in sink.delivered] == [r.egress_id for i, r in
                                                   enumerate(records) if i != 1]
    (m,) = read_all(settings, Topics(topic_prefix).dlq("rec"), 1)
    letter = DeadLetter.from_dict(make_serde(None).decode("DeadLetter", m.value()))
    assert letter.record.egress_id == doomed
    assert (letter.error_class, letter.attempts) == ("retryable", FAST.max_attempts)
    assert letter.first_failure < letter.last_failure
    assert committed(settings, "rec") == end_offsets(settings, Topics(topic_prefix).sink("rec"))


async def test_stop_never_commits_undelivered(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """A sink that hangs: stop() abandons the batch, and only what was delivered is committed."""
    settings = setup(kafka_broker, topic_prefix, "rec", batch_size=4, batch_linger_ms=50)
    records = [synthetic_record(obj, seq, "rec") for seq in range(1, 9) for obj in (1, 2, 3)]
    produce(settings, "rec", records)
    hang = asyncio.Event()

    async def behaviour(batch: Sequence[SinkRecord]) -> None:
        if sink.calls > 2:
            await hang.wait()  # never set: the destination stopped answering

    sink = RecordingSink("rec", behaviour)
    runner = SinkRunner("rec", sink, settings, retry=FAST, shutdown_timeout=0.5)
    started = time.monotonic()
    await run_until(runner, lambda: sink.calls >= 3)
    assert time.monotonic() - started < 15
    delivered = len(sink.delivered)
    assert 0 < delivered < len(records)
    offsets = committed(settings, "rec")
    # Offsets count records per partition from 0: committed ones are exactly the delivered ones.
    assert sum(offsets.values()) == delivered
    topic = Topics(topic_prefix).sink("rec")
    consumed = read_all(settings, topic, len(records))
    serde = make_serde(None)
    done_ids = {r.egress_id for r in sink.delivered}
    for m in consumed:
        egress = str(serde.decode("SinkRecord", m.value())["egress_id"])
        assert (m.offset() < offsets[m.partition()]) == (egress in done_ids)


async def test_missing_topics_fail_fast(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """Without its topics the runner refuses to start, naming them, and closes the sink."""
    settings = make_settings(kafka_broker, topic_prefix, sinks={"rec": {"type": "recording"}})
    sink = RecordingSink("rec")
    with pytest.raises(SinkConfigError, match=r"sink\.rec.*do not exist"):
        await asyncio.wait_for(SinkRunner("rec", sink, settings).run(), 30)
    assert sink.closed


def test_unknown_sink_name_is_a_config_error(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """A runner for a sink the configuration does not name fails at construction."""
    settings = make_settings(kafka_broker, topic_prefix)
    with pytest.raises(SinkConfigError, match=r"sinks\.nope"):
        SinkRunner("nope", RecordingSink("nope"), settings)


async def test_long_backoff_pauses_and_keeps_the_group(
    kafka_broker: LocalBroker, topic_prefix: str, receiver: Receiver
) -> None:
    """A Retry-After longer than the keep-alive interval: the worker pauses, keeps polling, and
    resumes with nothing lost, duplicated or reordered."""
    settings = setup(kafka_broker, topic_prefix, "hooks", batch_size=10)
    records = [synthetic_record(obj, seq, "hooks") for seq in range(1, 6) for obj in range(1, 9)]
    produce(settings, "hooks", records)
    receiver.script = lambda _r, n: Response(503, headers={"Retry-After": "1"}) if n == 0 \
        else Response()
    sink = WebhookSink("hooks", WebhookSettings(payload_url=receiver.url()),
                       SinkContext(environment="test", sink="hooks"))
    runner = SinkRunner("hooks", sink, settings, retry=FAST, keepalive_interval=0.1)
    paused: list[bool] = []

    def done() -> bool:
        paused.append(runner._paused)
        return len(receiver.delivered()) >= len(records)

    await run_until(runner, done)
    assert any(paused), "the worker never paused its partitions during the backoff"
    got = sorted(receiver.delivered(), key=lambda r: r.started)
    assert sorted(r.egress_id for r in got) == sorted(r.egress_id for r in records)
    assert {k: [r.egress_id for r in got if r.key == k] for k in per_key(records)} == \
        per_key(records)
    assert committed(settings, "hooks") == end_offsets(settings, Topics(topic_prefix).sink("hooks"))


async def test_rebalance_between_two_workers(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """A second worker joins while the first has a batch in flight: the first gives partitions
    up (committing what it stored), every record is delivered at least once, each worker keeps
    per-object order, and at the end all offsets are committed."""
    settings = setup(kafka_broker, topic_prefix, "rec", batch_size=5)
    records = [synthetic_record(obj, seq, "rec") for seq in range(1, 21) for obj in range(1, 10)]
    produce(settings, "rec", records)
    took_over = asyncio.Event()

    async def hold_until_taken_over(_batch: Sequence[SinkRecord]) -> None:
        if len(first.delivered) >= 20:
            await took_over.wait()  # in flight while the group rebalances around it

    async def mark(_batch: Sequence[SinkRecord]) -> None:
        took_over.set()

    first = RecordingSink("rec", hold_until_taken_over)
    second = RecordingSink("rec", mark)
    one = SinkRunner("rec", first, settings, retry=FAST, keepalive_interval=0.1)
    two = SinkRunner("rec", second, settings, retry=FAST)
    task_one = asyncio.create_task(one.run())
    try:
        while len(first.delivered) < 20:
            await asyncio.sleep(0.01)
        await run_until(two, lambda: {r.egress_id for r in first.delivered + second.delivered}
                        >= {r.egress_id for r in records})
    finally:
        one.stop()
        await asyncio.wait_for(task_one, 20)
    assert second.delivered
    wanted = per_key(records)
    for sink in (first, second):
        for key, got in per_key(sink.delivered).items():
            # Each worker delivers a contiguous, ordered run of each object's updates.
            start = wanted[key].index(got[0])
            assert got == wanted[key][start:start + len(got)], key
    assert committed(settings, "rec") == end_offsets(settings, Topics(topic_prefix).sink("rec"))


async def test_lag_gauges(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """While a batch hangs, the offset lag and the age of the oldest undelivered record show."""
    settings = setup(kafka_broker, topic_prefix, "rec")
    records = [synthetic_record(1, seq, "rec") for seq in range(1, 6)]
    produce(settings, "rec", records)
    hang = asyncio.Event()

    async def behaviour(_batch: Sequence[SinkRecord]) -> None:
        await hang.wait()

    registry = CollectorRegistry()
    runner = SinkRunner("rec", RecordingSink("rec", behaviour), settings, registry=registry,
                        stats_interval=0.2, shutdown_timeout=0.2)
    topic = Topics(topic_prefix).sink("rec")
    partition = next(p for p, end in end_offsets(settings, topic).items() if end)
    labels = {"group": Topics(topic_prefix).sink_group("rec"), "topic": topic,
              "partition": str(partition)}

    def lagging() -> bool:
        return (sample(registry, "nbstream_consumer_lag_messages", **labels) == len(records)
                and sample(registry, "nbstream_consumer_lag_seconds", **labels) > 0)

    await run_until(runner, lagging)
    assert registry.get_sample_value("nbstream_consumer_lag_seconds", labels) is None  # untracked
