"""``nbstream dlq list|replay SINK``: inspect dead letters and re-deliver them through the sink.

A replay sends each record unchanged, so it keeps its egress_id and receivers that deduplicate
on it see a retry, not a new event. The dead-letter topic is append-only: a replayed record
stays there, so replay again only what is new (``--since``) or what you name (``--egress-id``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, TopicPartition

from nbstream.tail import headers_text
from schemas.config import Settings
from schemas.records import DeadLetter
from schemas.serde import SerdeError, make_serde
from schemas.topics import Topics
from sinks.base import PartialBatchError, SinkContext, SinkError
from sinks.registry import create_sink

__all__ = ["Letter", "list_letters", "read_letters", "replay_letters"]


@dataclass(frozen=True)
class Letter:
    """One dead letter with where it sits in the DLQ and where it came from."""

    partition: int
    offset: int
    letter: DeadLetter
    origin: dict[str, str]


def read_letters(settings: Settings, sink: str) -> Iterator[Letter]:
    """Yield every dead letter of ``sink`` present now, in partition then offset order.

    Reads without a consumer group (nothing is committed) up to each partition's end offset.
    Raises SystemExit when the topic does not exist.
    """
    topic = Topics(settings.kafka.topic_prefix).dlq(sink)
    serde = make_serde(settings.schema_registry.url, settings.schema_registry.client)
    consumer = Consumer(settings.kafka.librdkafka(**{
        "group.id": f"nbstream-dlq-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise SystemExit(f"nbstream dlq: topic {topic!r} does not exist")
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            next_offset = low
            while next_offset < high:
                msg = consumer.poll(5)
                if msg is None:
                    break
                offset, value = msg.offset(), msg.value()
                if msg.error() is not None or offset is None or value is None:
                    continue
                next_offset = offset + 1
                try:
                    letter = DeadLetter.from_dict(serde.decode("DeadLetter", value))
                except SerdeError as err:
                    print(f"skipping undecodable dead letter {p}@{offset}: {err}",
                          file=sys.stderr)
                    continue
                yield Letter(p, offset, letter, headers_text(msg.headers()))
    finally:
        consumer.close()


def _selected(letters: Iterator[Letter], since: datetime | None,
              egress_ids: Sequence[str]) -> list[Letter]:
    """Filter by last failure time and egress ids."""
    return [x for x in letters
            if (since is None or x.letter.last_failure >= since)
            and (not egress_ids or x.letter.record.egress_id in egress_ids)]


def _row(x: Letter) -> dict[str, Any]:
    """Return a dead letter as a JSON-able dict (the payload stays a JSON string)."""
    d = x.letter.to_dict()
    d["first_failure"] = x.letter.first_failure.isoformat()
    d["last_failure"] = x.letter.last_failure.isoformat()
    d["record"]["source_timestamp"] = x.letter.record.source_timestamp.isoformat()
    return {"partition": x.partition, "offset": x.offset, "origin": x.origin, **d}


def list_letters(settings: Settings, sink: str, as_json: bool, out: TextIO | None = None) -> int:
    """Print the dead letters of ``sink``; return how many there are."""
    out = out or sys.stdout
    letters = list(read_letters(settings, sink))
    for x in letters:
        if as_json:
            out.write(json.dumps(_row(x)) + "\n")
        else:
            r = x.letter
            out.write(f"{x.partition}@{x.offset:<6} {r.last_failure:%Y-%m-%dT%H:%M:%SZ} "
                      f"{r.record.object_key:24s} {r.record.source_type.value:15s} "
                      f"egress_id={r.record.egress_id} {r.error_class}/{r.error_type} "
                      f"attempts={r.attempts}: {r.error_message[:120]}\n")
    if not as_json:
        topic = Topics(settings.kafka.topic_prefix).dlq(sink)
        out.write(f"{len(letters)} dead letter(s) in {topic}\n")
    return len(letters)


async def _deliver(settings: Settings, sink: str, letters: list[Letter],
                   out: TextIO) -> tuple[int, int]:
    """Send the letters' records through the sink in order; return (delivered, failed)."""
    instance = create_sink(sink, settings.sinks[sink], SinkContext(settings.environment, sink))
    await instance.open()
    delivered = failed = 0
    try:
        size = settings.sinks[sink].batch_size
        for start in range(0, len(letters), size):
            chunk = letters[start:start + size]
            try:
                await instance.write_batch([x.letter.record for x in chunk])
                bad: dict[int, Any] = {}
            except PartialBatchError as err:
                bad = dict(err.failed)
            except SinkError as err:
                bad = dict.fromkeys(range(len(chunk)), err)
            for i, x in enumerate(chunk):
                rec = x.letter.record
                if i in bad:
                    failed += 1
                    out.write(f"FAILED    {rec.egress_id} {rec.object_key}: "
                              f"{type(bad[i]).__name__}: {bad[i]}\n")
                else:
                    delivered += 1
                    out.write(f"delivered {rec.egress_id} {rec.object_key}\n")
    finally:
        await instance.close()
    return delivered, failed


def replay_letters(settings: Settings, sink: str, since: datetime | None,
                   egress_ids: Sequence[str], dry_run: bool, out: TextIO | None = None) -> int:
    """Re-deliver the selected dead letters through ``sink``; return the exit code.

    0 when every selected record was delivered (or, with ``dry_run``, would be sent), 1 when
    some failed again.
    """
    out = out or sys.stdout
    letters = _selected(read_letters(settings, sink), since, egress_ids)
    if dry_run:
        for x in letters:
            r = x.letter.record
            out.write(f"would replay {r.egress_id} {r.object_key} {r.source_type.value} "
                      f"(dead-lettered {x.letter.last_failure:%Y-%m-%dT%H:%M:%SZ}: "
                      f"{x.letter.error_type})\n")
        out.write(f"dry run: {len(letters)} record(s) selected, nothing sent\n")
        return 0
    delivered, failed = asyncio.run(_deliver(settings, sink, letters, out))
    out.write(f"replayed {len(letters)} record(s) through {sink}: {delivered} delivered, "
              f"{failed} failed\n")
    return 0 if failed == 0 else 1
