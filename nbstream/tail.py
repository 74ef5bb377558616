"""``nbstream tail TOPIC``: decode any nbstream topic and print its records as JSON lines."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from schemas.config import Settings
from schemas.serde import SerdeError, make_serde
from schemas.topics import Topics

__all__ = ["headers_text", "record_type", "tail"]


def record_type(topics: Topics, topic: str) -> str | None:
    """Return the Avro record name carried by ``topic``, or None for raw-bytes topics."""
    if topic == topics.raw:
        return "NetBoxEvent"
    if topic.startswith(topics.prefix + "sink."):
        return "SinkRecord"
    if topic.startswith(topics.prefix + "dlq."):
        return "DeadLetter"
    return None


def _jsonable(value: Any) -> Any:
    """Render datetimes (ISO 8601) and UUIDs as JSON strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def headers_text(headers: Any) -> dict[str, str]:
    """Return Kafka headers (a list of pairs, or a dict) as text."""
    out = {}
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    for name, value in pairs:
        out[name] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return out


def tail(settings: Settings, topic: str, *, from_beginning: bool, max_records: int | None,
         idle_timeout: float | None, out: TextIO | None = None) -> int:
    """Print decoded records of ``topic``; return how many were printed.

    Reads every partition without joining a consumer group (nothing is committed), from the
    beginning or from the end, until ``max_records`` or ``idle_timeout`` seconds of silence.
    """
    out = out or sys.stdout
    topics = Topics(settings.kafka.topic_prefix)
    kind = record_type(topics, topic)
    serde = make_serde(settings.schema_registry.url, settings.schema_registry.client)
    consumer = Consumer(settings.kafka.librdkafka(**{
        "group.id": f"nbstream-tail-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise SystemExit(f"nbstream tail: topic {topic!r} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in meta.partitions])
        printed, last = 0, time.monotonic()
        while max_records is None or printed < max_records:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            doc: dict[str, Any] = {"topic": topic, "partition": msg.partition(),
                                   "offset": msg.offset(),
                                   "key": (msg.key() or b"").decode(errors="replace"),
                                   "headers": headers_text(msg.headers())}
            value = msg.value() or b""
            if kind is None:
                doc["value_base64"] = base64.b64encode(value).decode()
            else:
                try:
                    doc["value"] = _jsonable(serde.decode(kind, value))
                except SerdeError as err:
                    doc["error"], doc["value_base64"] = str(err), base64.b64encode(value).decode()
            out.write(json.dumps(doc) + "\n")
            out.flush()
            printed += 1
        return printed
    finally:
        consumer.close()
