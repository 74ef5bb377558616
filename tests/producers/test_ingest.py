"""Tests for producers.ingest under a real uvicorn server against the real Kafka broker."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from producers.ingest import IngestApp, create_app
from producers.normalize import normalize
from producers.signature import sign
from schemas.config import Settings
from schemas.records import NetBoxEvent
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.conftest import FIXTURE_SECRET, FIXTURES, free_port, make_settings

pytestmark = pytest.mark.kafka

WEBHOOKS: list[dict[str, Any]] = [
    json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line
]
METRIC_NAMES = (
    "nbstream_ingest_requests_total",
    "nbstream_ingest_request_seconds",
    "nbstream_ingest_produce_seconds",
    "nbstream_ingest_events_total",
)


@contextmanager
def serve(app: IngestApp) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free port; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="ingest-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the ingest server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the ingest server did not stop"


def fixture_headers(hook: dict[str, Any]) -> dict[str, str]:
    """Return the headers NetBox sent, minus those httpx sets itself (Host, Content-Length)."""
    return {k: v for k, v in hook["headers"] if k.lower() not in ("host", "content-length")}


def signed(body: bytes, secret: str = FIXTURE_SECRET) -> dict[str, str]:
    """Return JSON headers with NetBox's signature of ``body``."""
    return {"Content-Type": "application/json", "X-Hook-Signature": sign(body, secret)}


def _consumer(settings: Settings) -> Consumer:
    """Return a consumer that reads without committing."""
    return Consumer(settings.kafka.librdkafka(**{
        "group.id": f"test-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }))


def stored(settings: Settings) -> int:
    """Return how many records the raw topic holds (sum of partition end offsets)."""
    topic = Topics(settings.kafka.topic_prefix).raw
    consumer = _consumer(settings)
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(settings.kafka.partitions))
    finally:
        consumer.close()


def consume(settings: Settings, count: int, timeout: float = 30.0) -> list[Message]:
    """Return ``count`` records of the raw topic, each partition's in offset order."""
    topic = Topics(settings.kafka.topic_prefix).raw
    consumer = _consumer(settings)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for p in range(settings.kafka.partitions)])
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    return got


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    """Assert a JSON error answer with the given status and short code."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


def test_fixtures_accepted_stored_and_ordered(kafka_broker: LocalBroker, topic_prefix: str
                                              ) -> None:
    """All 31 real webhooks get 202 after the ack; the raw topic holds them, in per-key order."""
    settings = make_settings(kafka_broker, topic_prefix)
    ensure_topics(settings)
    expected = [normalize(json.loads(h["body"]), h["body"], settings.netbox, datetime.now(UTC))
                for h in WEBHOOKS]
    started = datetime.now(UTC)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for hook, event in zip(WEBHOOKS, expected, strict=True):
            resp = client.post("/webhook", content=hook["body"].encode("utf-8"),
                               headers=fixture_headers(hook))
            assert resp.status_code == 202, resp.text
            assert resp.json() == {"source_id": event.source_id, "object_key": event.object_key,
                                   "event_type": event.event_type.value}
            assert resp.request.headers["content-length"] == dict(hook["headers"])[
                "Content-Length"]
        # 202 means stored: the records are there without waiting for a flush.
        assert stored(settings) == len(WEBHOOKS)
        metrics = client.get("/metrics").text
    finished = datetime.now(UTC)
    assert 'nbstream_ingest_requests_total{status="202"} 31.0' in metrics
    assert 'nbstream_ingest_events_total{event_type="job_completed"} 2.0' in metrics

    records = consume(settings, len(WEBHOOKS))
    assert len(records) == len(WEBHOOKS)
    serde = make_serde(None)
    by_id = {e.source_id: e for e in expected}
    per_key: dict[bytes, list[str]] = defaultdict(list)
    for msg in records:
        key, value = msg.key(), msg.value()
        assert isinstance(key, bytes) and isinstance(value, bytes)
        got = NetBoxEvent.from_dict(serde.decode("NetBoxEvent", value))
        want = by_id[got.source_id]
        assert key == want.object_key.encode("utf-8")
        assert dict(msg.headers() or [])["nbstream-source-id"] == want.source_id.encode()
        assert started <= got.ingest_timestamp <= finished
        for field in NetBoxEvent.__slots__:
            if field != "ingest_timestamp":
                assert getattr(got, field) == getattr(want, field), field
        per_key[key].append(got.source_id)
    fixture_order: dict[bytes, list[str]] = defaultdict(list)
    for event in expected:
        fixture_order[event.object_key.encode("utf-8")].append(event.source_id)
    assert per_key == fixture_order


def test_rejections_answer_json_and_store_nothing(kafka_broker: LocalBroker, topic_prefix: str
                                                  ) -> None:
    """Every rejected request gets its status and JSON error, and no record reaches the topic."""
    settings = make_settings(kafka_broker, topic_prefix, ingest={"max_body_bytes": 4096})
    ensure_topics(settings)
    good = WEBHOOKS[0]["body"].encode("utf-8")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/webhook", content=good, headers=signed(good)).status_code == 202
        before = stored(settings)
        assert before == 1

        def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
            return client.post("/webhook", content=body, headers=headers)

        assert_error(post(b'{"event": "created",', signed(b'{"event": "created",')), 400,
                     "malformed_json")
        assert_error(post(b"[1, 2]", signed(b"[1, 2]")), 400, "not_an_object")
        assert_error(post(b"\xff\xfe{}", signed(b"\xff\xfe{}")), 400, "malformed_json")
        assert_error(post(b'{"x": NaN}', signed(b'{"x": NaN}')), 400, "malformed_json")
        huge = b'{"x": -1.5e999}'
        resp = post(huge, signed(huge))
        assert_error(resp, 400, "malformed_json")
        assert "out of range" in resp.json()["detail"]
        other = b'{"hello": "world"}'
        resp = post(other, signed(other))
        assert_error(resp, 400, "not_a_netbox_event")
        assert resp.json()["detail"] == "payload has no event"
        unknown = good.replace(b'"event": "created"', b'"event": "exploded"')
        resp = post(unknown, signed(unknown))
        assert_error(resp, 400, "not_a_netbox_event")
        assert "unknown event 'exploded'" in resp.json()["detail"]

        assert_error(post(good, {"Content-Type": "application/json"}), 401, "missing_signature")
        assert_error(post(good, signed(good, "wrong-secret")), 401, "bad_signature")
        assert_error(post(good + b" ", signed(good)), 401, "bad_signature")

        big = b'{"pad": "' + b"x" * 5000 + b'"}'
        assert_error(post(big, signed(big)), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:
            for _ in range(16):
                yield b"x" * 1024

        resp = client.post("/webhook", content=chunks(), headers=signed(b""))
        assert "content-length" not in resp.request.headers
        assert resp.request.headers["transfer-encoding"] == "chunked"
        assert_error(resp, 413, "payload_too_large")

        assert_error(post(good, {**signed(good), "Content-Type": "text/plain"}), 415,
                     "unsupported_media_type")
        assert_error(post(good, {"X-Hook-Signature": sign(good, FIXTURE_SECRET)}), 415,
                     "unsupported_media_type")
        utf16 = {**signed(good), "Content-Type": "application/json; charset=utf-16"}
        assert_error(post(good, utf16), 415, "unsupported_media_type")
        resp = post(good, {**signed(good), "Content-Type": "application/json; charset=UTF-8"})
        assert resp.status_code == 202  # a duplicate delivery: stored again, same source_id
        assert_error(client.get("/webhook"), 405, "method_not_allowed")
        assert_error(client.get("/nope"), 404, "not_found")

        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        for name in METRIC_NAMES:
            assert name in metrics.text
        for status in ("400", "401", "413", "415"):
            assert f'nbstream_ingest_requests_total{{status="{status}"}}' in metrics.text
    assert stored(settings) == before + 1  # only the charset=UTF-8 delivery


def test_content_length_over_limit_answered_before_the_body(kafka_broker: LocalBroker,
                                                            topic_prefix: str) -> None:
    """A declared Content-Length over the limit gets 413 at once, without reading the body."""
    settings = make_settings(kafka_broker, topic_prefix, ingest={"max_body_bytes": 4096})
    ensure_topics(settings)
    with serve(create_app(settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 104857600\r\n\r\n{")
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(4096)
    head = answer.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert b"connection: close" in answer.lower()
    assert stored(settings) == 0


def test_unsigned_accepted_without_secrets(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """With no webhook_secrets configured, unsigned webhooks are accepted."""
    settings = make_settings(kafka_broker, topic_prefix,
                             netbox={"id": "nb-test", "webhook_secrets": []})
    ensure_topics(settings)
    body = WEBHOOKS[3]["body"].encode("utf-8")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        resp = client.post("/webhook", content=body,
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert stored(settings) == 1


def test_broker_down_answers_503(kafka_broker: LocalBroker, topic_prefix: str) -> None:
    """With no broker to take the record, /webhook answers 503 with Retry-After; /readyz 503."""
    settings = make_settings(
        kafka_broker, topic_prefix,
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        ingest={"produce_timeout": 2.0},
    )
    body = WEBHOOKS[0]["body"].encode("utf-8")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        t0 = time.monotonic()
        resp = client.post("/webhook", content=body, headers=signed(body))
        elapsed = time.monotonic() - t0
        assert_error(resp, 503, "broker_unavailable")
        assert resp.headers["retry-after"] == "5"
        assert 1.5 <= elapsed < 10
        ready = client.get("/readyz")
        assert_error(ready, 503, "not_ready")
        assert client.get("/healthz").status_code == 200
        assert 'nbstream_ingest_requests_total{status="503"} 1.0' in client.get("/metrics").text


class _BrokenProducer:
    """A producer with a bug: its produce raises what no contract allows."""

    def __init__(self) -> None:
        self.calls = 0

    async def produce(self, topic: str, key: bytes, value: bytes,
                      headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        self.calls += 1
        raise RuntimeError("a bug, not a broker error")

    async def ready(self) -> bool:
        return True


def test_unexpected_failure_answers_500_and_keeps_serving(kafka_broker: LocalBroker,
                                                          topic_prefix: str) -> None:
    """A bug behind /webhook is a JSON 500, counted, and the next requests are served."""
    settings = make_settings(kafka_broker, topic_prefix)
    producer = _BrokenProducer()
    body = WEBHOOKS[0]["body"].encode("utf-8")
    with serve(create_app(settings, producer)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(2):
            assert_error(client.post("/webhook", content=body, headers=signed(body)), 500,
                         "internal_error")
        assert client.get("/healthz").json() == {"status": "ok"}
        metrics = client.get("/metrics").text
    assert producer.calls == 2
    assert 'nbstream_ingest_requests_total{status="500"} 2.0' in metrics
