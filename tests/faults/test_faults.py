"""Fault suite (issue 4): the pipeline loses nothing that ingest acknowledged, under kill -9 of a
stage, a broker outage, a failing or rejecting destination, poison records and repeated webhooks.

Every test runs ingest, processor and the ``hook`` webhook sink (fault (a) also an ``mqtt`` sink
publishing to Mosquitto) as real processes on a real broker, posts NetBox-shaped webhooks like
NetBox does (per object in order, no retry), prints one
``sent=… acknowledged=… delivered=… duplicates=… lost=…`` line and asserts ``lost=0``, that
every duplicate carries the egress_id of its first delivery and that per-object order holds.
Fault timing is random but reproducible: each test prints its seed; set
``NBSTREAM_FAULT_SEED`` to replay one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from nbstream.cli import main
from nbstream.dlq import Letter, read_letters
from nbstream.kafka_local import LocalBroker
from producers.kafka_producer import KafkaProducer, ProduceError, producer_config
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.conftest import free_port
from tests.faults.pipeline import (
    Destination,
    FaultPipeline,
    MqttDestination,
    Posted,
    Progress,
    Summary,
    WebhookDestination,
    acked_ids,
    assert_sound,
    make_events,
    seeded,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

Build = Callable[..., FaultPipeline]
Report = Callable[[str, Summary, str], None]


async def start(build: Build, tmp_path: Path, servers: str, prefix: str,
                destination: Destination, **kwargs: Any) -> FaultPipeline:
    """Create topics, start every stage, wait for ingest to be ready."""
    p = build(tmp_path, servers, prefix, destination, **kwargs)
    p.create_topics()
    p.start_all()
    await p.wait_ingest_ready()
    return p


async def kill_under_load(
    p: Any, events: list[Any], stage: str, marks: list[float],
    delays: list[float], reached: Callable[[float], bool], what: str,
) -> Any:
    """Post ``events``; each time ``reached(mark)``, wait ``delay`` then kill -9 and restart
    ``stage``; return what was posted once every acknowledged event was delivered."""

    async def chaos() -> None:
        for mark, delay in zip(marks, delays, strict=True):
            await p.wait_for(partial(reached, mark), 240, f"{mark:.0%} {what}")
            await asyncio.sleep(delay)
            p.kill(stage)
            p.start(stage)

    load = asyncio.ensure_future(p.post_load(events))
    try:
        await chaos()
        posted = await load
    finally:
        load.cancel()
    await p.wait_delivered(acked_ids(posted), timeout=120)
    await asyncio.sleep(1.0)  # anything extra (a duplicate) would arrive now
    return posted


@pytest.fixture
def sink_worker_kills(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path, pipelines: Build,
    report: Report,
) -> Callable[[Destination, str], Awaitable[None]]:
    """Fault (a) against a destination: kill -9 the sink worker three times while 10,000
    events flow, restarting it each time; report the outcome under a label and check it."""

    async def run(destination: Destination, label: str) -> None:
        seed, rnd = seeded()
        p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix,
                        destination)
        events = make_events(range(1, 201), 50, p.run)
        total = len(events)
        # Kill when a random share of the events was delivered, in three spread bands.
        marks = [rnd.uniform(lo, hi) for lo, hi in ((0.08, 0.3), (0.38, 0.6), (0.68, 0.9))]
        delays = [rnd.uniform(0, 0.25) for _ in marks]
        progress = Progress(p.destination)

        def delivered_share(mark: float) -> bool:
            return progress.unique() >= mark * total

        posted = await kill_under_load(p, events, "sink", marks, delays, delivered_share,
                                       "delivered")
        s = p.summarize(posted)
        report(label, s, f"seed={seed}, kills at "
               + ", ".join(f"{m:.0%}" for m in marks) + " delivered")
        assert s.acknowledged == s.sent == total
        assert p.stages["sink"].kills == 3
        assert_sound(s, p)

    return run


async def test_a_sink_worker_killed_and_restarted(
    hook: WebhookDestination, sink_worker_kills: Callable[[Destination, str], Awaitable[None]],
) -> None:
    """kill -9 the webhook sink worker three times while 10,000 events flow: every event
    delivered, duplicates with their first egress_id, per-object order kept."""
    await sink_worker_kills(hook, "a: sink worker kill -9 x3")


async def test_a_mqtt_sink_worker_killed_and_restarted(
    mqtt: MqttDestination, sink_worker_kills: Callable[[Destination, str], Awaitable[None]],
) -> None:
    """Fault (a) against a cloud sink: the ``mqtt`` sink publishing with QoS 1 to a real
    Mosquitto, read by a QoS 1 subscriber connected throughout; the same guarantees."""
    await sink_worker_kills(mqtt, "a: mqtt sink worker kill -9 x3")


async def test_b_processor_killed_and_restarted(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Build, report: Report,
) -> None:
    """kill -9 the processor twice mid-stream while 10,000 events flow: the same guarantees."""
    seed, rnd = seeded()
    p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    events = make_events(range(1, 201), 50, p.run)
    total = len(events)
    # Kill when the processor has published a random share of the stream to the sink topic.
    marks = [rnd.uniform(lo, hi) for lo, hi in ((0.1, 0.4), (0.5, 0.85))]
    delays = [rnd.uniform(0, 0.25) for _ in marks]

    def progressed(mark: float) -> bool:
        return p.routed() >= mark * total

    posted = await kill_under_load(p, events, "process", marks, delays, progressed, "routed")
    s = p.summarize(posted)
    report("b: processor kill -9 x2", s, f"seed={seed}, kills at "
           + ", ".join(f"{m:.0%}" for m in marks) + " routed")
    assert s.acknowledged == s.sent == total
    assert p.stages["process"].kills == 2
    assert_sound(s, p)


async def test_c_broker_stopped_during_ingest_load(
    topic_prefix: str, tmp_path: Path, hook: WebhookDestination, pipelines: Build,
    report: Report,
) -> None:
    """Stop the broker (its own, not the session's) during ingest load and start it again:
    every 202-acknowledged event is delivered; what ingest answered while the broker was down
    is 503 with Retry-After, and /readyz was 503 meanwhile."""
    seed, rnd = seeded()
    broker = LocalBroker(data_dir=tmp_path / "kafka", port=free_port(),
                         controller_port=free_port(), heap="512m")
    await asyncio.to_thread(broker.start, 120)
    p = pipelines(tmp_path, broker.bootstrap_servers, topic_prefix, hook, produce_timeout=2.0)
    try:
        p.create_topics()
        p.start_all()
        await p.wait_ingest_ready()
        events = make_events(range(1, 41), 50, p.run)
        total = len(events)
        answered: list[Posted] = []
        ready: list[tuple[float, int]] = []
        outage: dict[str, float] = {}
        mark = rnd.uniform(0.15, 0.35)
        down_for = rnd.uniform(5.0, 8.0)
        load_done = asyncio.Event()

        async def watch_ready() -> None:
            async with httpx.AsyncClient(timeout=3) as client:
                while not load_done.is_set():
                    ready.append((time.monotonic(), await p.readyz(client)))
                    await asyncio.sleep(0.25)

        async def outage_cycle() -> None:
            await p.wait_for(lambda: len(answered) >= mark * total, 240, f"{mark:.0%} answered")
            outage["stopping"] = time.monotonic()
            await asyncio.to_thread(broker.stop)
            outage["down"] = time.monotonic()
            await asyncio.sleep(down_for)
            outage["starting"] = time.monotonic()
            await asyncio.to_thread(broker.start, 120)
            outage["up"] = time.monotonic()

        watcher = asyncio.ensure_future(watch_ready())
        load = asyncio.ensure_future(p.post_load(events, rate=150, on_answer=answered.append))
        try:
            await outage_cycle()
            posted = await load
        finally:
            load.cancel()
            load_done.set()
            await watcher
        await p.wait_ingest_ready(timeout=60)  # ready again once the broker is back
        await p.wait_delivered(acked_ids(posted), timeout=240)
        await asyncio.sleep(1.0)
        s = p.summarize(posted)
        refused = [x for x in posted if x.status == 503]
        stopping = outage["down"] - outage["stopping"]
        starting = outage["up"] - outage["starting"]
        report("c: broker stopped during ingest load", s,
               f"seed={seed}, broker stopped after {mark:.0%} answered, down "
               f"{outage['starting'] - outage['down']:.1f}s (+{stopping:.1f}s stopping, "
               f"{starting:.1f}s starting), 503s={len(refused)}")
    finally:
        p.stop_all()  # while the broker still runs, so the stages can leave cleanly
        await asyncio.to_thread(broker.stop)

    assert {x.status for x in posted} <= {202, 503}, {x.status for x in posted}
    assert refused, "no request was refused while the broker was down"
    assert all(x.retry_after for x in refused), "a 503 without Retry-After"
    # Nothing could be stored between the broker's exit and its restart: only 503s then.
    during = [x for x in posted if x.sent >= outage["down"] and x.answered <= outage["starting"]]
    assert during and all(x.status == 503 for x in during), [x.status for x in during]
    assert any(code == 503 for t, code in ready if outage["down"] <= t <= outage["starting"])
    assert any(code == 200 for t, code in ready if t < outage["stopping"])
    assert s.acknowledged + len(refused) == s.sent == total
    assert_sound(s, p)


async def test_c_ingest_backlog_is_bounded(tmp_path: Path) -> None:
    """While the broker cannot take records, the ingest producer's local queue stops at
    librdkafka's bound (queue.buffering.max.messages = 100,000; max.kbytes = 1 GiB), and a
    produce beyond it fails at once as a retriable _QUEUE_FULL (ingest answers 503)."""
    settings = parse_settings({
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic_prefix": "bound."},
        "ingest": {"produce_timeout": 120},
    }, env={})
    conf = producer_config(settings)
    assert "queue.buffering.max.messages" not in conf and "queue.buffering.max.kbytes" not in conf
    producer = KafkaProducer.from_settings(settings)
    topic = Topics("bound.").raw
    queued = 0
    try:
        with pytest.raises(BufferError):
            while queued <= 200_000:
                producer._producer.produce(topic, b"v", b"k")
                queued += 1
        with pytest.raises(ProduceError) as info:
            await producer.produce(topic, b"k", b"v")
        assert info.value.retriable and info.value.code == "_QUEUE_FULL"
    finally:
        await asyncio.to_thread(producer.close, 0)
    assert queued == 100_000


async def test_d_destination_unavailable_for_30s(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Build, report: Report,
) -> None:
    """The destination answers 503 for 30 s, then recovers: all delivered, retries counted,
    nothing dead-lettered."""
    rec = hook.receiver
    rec.status = 503
    p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    events = make_events(range(1, 41), 50, p.run)
    recovers_at = time.monotonic() + 30.0
    posted = await p.post_load(events)
    await p.wait_for(lambda: rec.rejected > 0, 60, "the first refused delivery")
    await asyncio.sleep(max(0.0, recovers_at - time.monotonic()))
    assert not rec.by_path("/hook"), "delivered while the destination answered 503"
    refused_before = rec.rejected
    rec.status = 200
    await p.wait_delivered(acked_ids(posted), timeout=180)
    await asyncio.sleep(1.0)
    retried = p.sink_metric("nbstream_sink_retried_total")
    letters = await asyncio.to_thread(lambda: list(read_letters(p.settings, "hook")))
    s = p.summarize(posted)
    report("d: destination 503 for 30 s", s,
           f"503s answered={refused_before}, nbstream_sink_retried_total={retried:.0f}, "
           f"dead letters={len(letters)}")
    assert s.acknowledged == s.sent == len(events)
    assert retried > 0
    assert not letters
    assert_sound(s, p)


async def test_e_destination_rejects_some_records(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Build, report: Report,
) -> None:
    """The destination answers 400 for some objects: their records are dead-lettered with the
    error, all others delivered; after the destination is fixed, `nbstream dlq replay`
    delivers the rest."""
    rec = hook.receiver
    rejected_objs = {3, 11, 19, 27, 35}
    rec.status_for = lambda body: (
        400 if json.loads(body)["message"]["data"]["id"] in rejected_objs else 200)
    p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    events = make_events(range(1, 41), 50, p.run)
    posted = await p.post_load(events)
    acked = acked_ids(posted)
    rejected = {x.source_id for x in posted
                if x.source_id and x.event.obj in rejected_objs}
    await p.wait_delivered(acked - rejected, timeout=180)

    letters: list[Letter] = []

    def all_dead_lettered() -> bool:
        nonlocal letters
        letters = list(read_letters(p.settings, "hook"))
        return len(letters) >= len(rejected)

    await p.wait_for(all_dead_lettered, 120, "dead letters")
    assert {x.letter.record.source_id for x in letters} == rejected
    for x in letters:
        assert x.letter.error_class == "permanent", x.letter
        assert "400" in x.letter.error_message, x.letter.error_message
        assert x.letter.attempts == 1
    assert not {d.source_id for d in p.deliveries()} & rejected

    rec.status_for = None  # the destination is fixed
    out = io.StringIO()

    def replay() -> int:
        with contextlib.redirect_stdout(out):
            return main(["--config", str(p.path), "dlq", "replay", "hook"])

    assert await asyncio.to_thread(replay) == 0, out.getvalue()[-2000:]
    assert f"{len(rejected)} delivered, 0 failed" in out.getvalue()
    s = p.summarize(posted)
    report("e: destination 400 for 5 of 40 objects, then dlq replay", s,
           f"dead-lettered={len(letters)}, replayed={len(rejected)}")
    assert s.acknowledged == s.sent == len(events)
    assert_sound(s, p)


async def test_f_corrupt_record_in_the_raw_topic(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Build, report: Report,
) -> None:
    """Garbage written straight into the raw topic, between valid events of the same objects,
    lands in the invalid topic with its error, and the stream goes on."""
    p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    events = make_events(range(1, 21), 50, p.run)
    half = len(events) // 2
    posted = await p.post_load(events[:half])
    # Keys of real objects, placed by the ingest's partitioner: the garbage sits in the
    # middle of those objects' partitions.
    garbage = {b"dcim.device:1": b"this is not avro",
               b"dcim.device:2": b"\xc3\x01" + bytes(8) + b"unknown fingerprint",
               b"dcim.device:3": b""}
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                         "partitioner": "murmur2_random"})
    for key, value in garbage.items():
        producer.produce(p.topics.raw, value=value, key=key)
    assert producer.flush(30) == 0
    posted += await p.post_load(events[half:])
    await p.wait_delivered(acked_ids(posted), timeout=180)

    found: dict[bytes, dict[str, bytes]] = {}

    def read_invalid() -> bool:
        c = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                      "group.id": f"{topic_prefix}check", "enable.auto.commit": False})
        try:
            topic = p.topics.invalid
            tps = [TopicPartition(topic, i, 0) for i in range(p.settings.kafka.partitions)]
            c.assign(tps)
            idle = 0
            while idle < 4:
                msg = c.poll(0.5)
                if msg is None:
                    idle += 1
                    continue
                if msg.error() is None:
                    raw = msg.headers() or []
                    pairs = raw.items() if isinstance(raw, dict) else raw
                    found[msg.key() or b""] = {
                        **{k: v if isinstance(v, bytes) else b"" for k, v in pairs},
                        "value": msg.value() or b""}
        finally:
            c.close()
        return set(found) >= set(garbage)

    await p.wait_for(read_invalid, 60, "the corrupt records in the invalid topic")
    s = p.summarize(posted)
    report("f: corrupt records in the raw topic", s,
           f"invalid={len(found)} (of {len(garbage)} written)")
    for key, value in garbage.items():
        headers = found[key]
        assert headers["value"] == value
        assert headers["nbstream-error"], headers
        assert headers["nbstream-original-topic"] == p.topics.raw.encode()
    assert s.acknowledged == s.sent == len(events)
    assert_sound(s, p)


async def test_g_same_signed_webhook_posted_twice(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    hook: WebhookDestination, pipelines: Build, report: Report,
) -> None:
    """Each signed webhook posted twice, and once more after a pause: one delivery each."""
    p = await start(pipelines, tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook)
    events = make_events(range(1, 31), 4, p.run)
    twice = [ev for ev in events for _ in range(2)]
    posted = await p.post_load(twice)
    await asyncio.sleep(2.0)
    posted += await p.post_load(events)
    await p.wait_delivered(acked_ids(posted), timeout=120)
    await asyncio.sleep(3.0)  # a duplicate would arrive by now
    s = p.summarize(posted)
    report("g: same signed webhook posted 3 times", s, f"events={len(events)}")
    by_event: dict[tuple[int, int], set[str | None]] = {}
    for x in posted:
        by_event.setdefault((x.event.obj, x.event.seq), set()).add(x.source_id)
    assert all(len(ids) == 1 for ids in by_event.values())  # same body, same source_id
    assert s.acknowledged == s.sent == 3 * len(events)
    assert s.delivered == len(events)
    assert s.duplicates == 0
    assert_sound(s, p)

