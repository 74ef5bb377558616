"""The Service Bus sink against a local AMQP 1.0 peer, with the unmodified azure-servicebus SDK:
bodies, native metadata, sessions, batching, error classification, fail-fast and end to end."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.servicebus.exceptions import (
    MessagingEntityDisabledError,
    ServiceBusAuthenticationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
)
from pydantic import SecretStr

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.identity import egress_id, object_key
from schemas.records import SinkRecord
from sinks.attributes import routing_attributes
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
)
from sinks.registry import validate_sink_settings
from sinks.servicebus import ServiceBusSettings, ServiceBusSink, classify
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import assert_alive, e2e_base, nbstream_processes
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.records import fixture_records, record_from_payload, synthetic_record
from tests.sinks.servers.amqp_peer import AmqpPeer, ReceivedMessage

SINK = "bus"
QUEUE, TOPIC, SESSIONS = "orders", "events", "sessions"
BUSY, DENIED, SCRATCH, E2E = "busy", "denied", "scratch", "netbox"
ENVELOPE_KEYS = [
    "version", "source_id", "source_timestamp", "source_type", "source_type_docs", "netbox_id",
    "netbox_version", "egress_environment", "egress_id", "egress_timestamp", "egress_version",
    "message",
]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
MAX_MESSAGE = 256 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[AmqpPeer]:
    """The AMQP peer for the whole module; a peer that cannot start fails the tests."""
    peer = AmqpPeer([QUEUE, TOPIC, BUSY, DENIED, SCRATCH, E2E], session_entities=[SESSIONS],
                    max_message_size=MAX_MESSAGE)
    try:
        peer.start()
    except RuntimeError as err:
        pytest.fail(f"the AMQP test peer did not start: {err}")
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def peer(server: AmqpPeer) -> AmqpPeer:
    """The module's peer, with nothing recorded and nothing scripted."""
    server.clear()
    return server


def bus_sink(peer: AmqpPeer, *, key: str | None = None, **fields: Any) -> ServiceBusSink:
    """Return an unopened sink sending to ``peer`` (to the queue unless fields say otherwise)."""
    options: dict[str, Any] = {"connection_string": peer.connection_string(key=key), **fields}
    if "topic" not in options:
        options.setdefault("queue", QUEUE)
    settings = ServiceBusSettings.model_validate(options)
    return ServiceBusSink(SINK, settings, SinkContext(environment="test", sink=SINK))


async def send(sink: Sink[Any], records: list[SinkRecord]) -> dict[int, Exception]:
    """Open ``sink``, write one batch, close it; return the failures by index."""
    await sink.open()
    try:
        await sink.write_batch(records)
    except PartialBatchError as err:
        return dict(err.failed)
    finally:
        await sink.close()
    return {}


def big_record(obj: int, seq: int, size: int) -> SinkRecord:
    """Return update ``seq`` of device ``obj`` whose payload is about ``size`` bytes."""
    payload = {"event": "updated", "timestamp": f"2026-11-22T10:30:{seq % 60:02d}.{obj:06d}+00:00",
               "object_type": "dcim.device", "username": "admin", "request_id": f"r-{obj}-{seq}",
               "data": {"id": obj, "seq": seq, "comments": "x" * size}, "snapshots": {}}
    return record_from_payload(json.dumps(payload), SINK)


def key(payload: dict[str, Any]) -> str:
    """Return the object key nbstream derives for a NetBox payload."""
    data = payload.get("data")
    oid = data.get("id") if isinstance(data, dict) else None
    return object_key(payload["object_type"], oid if isinstance(oid, int) else None)


def ids(messages: list[ReceivedMessage]) -> list[str | None]:
    """Return the message ids, in arrival order."""
    return [m.message_id for m in messages]


# -- conformance --------------------------------------------------------------------------


class ServiceBusHarness:
    """The conformance harness: the peer's queue; scripted rejections as failures."""

    sink_name = SINK

    def __init__(self, peer: AmqpPeer) -> None:
        self.peer = peer
        peer.fail(BUSY, "com.microsoft:server-busy", "the server is busy")
        peer.fail(DENIED, "amqp:unauthorized-access", "the token does not grant Send")

    def make_sink(self) -> Sink[Any]:
        return bus_sink(self.peer)

    def make_misconfigured_sink(self) -> Sink[Any]:
        return bus_sink(self.peer, queue="missing")

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        return bus_sink(self.peer, queue=BUSY if error_class == "retryable" else DENIED)

    async def received(self) -> list[str]:
        return [str(m.message_id) for m in self.peer.received(QUEUE)]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, peer: AmqpPeer) -> None:
    """The Service Bus sink passes the checks every sink must pass."""
    await check(ServiceBusHarness(peer))


# -- bodies and native metadata -------------------------------------------------------------


async def test_envelope_and_native_metadata(peer: AmqpPeer) -> None:
    """Each captured NetBox event arrives as the envelope with Service Bus metadata, in order."""
    records = fixture_records(SINK)
    before = datetime.now(UTC)
    assert await send(bus_sink(peer), records) == {}
    after = datetime.now(UTC)
    got = peer.received(QUEUE)
    assert ids(got) == [r.egress_id for r in records]
    assert peer.transfers(QUEUE) == 1  # one batch: 31 small messages fit
    for rec, msg in zip(records, got, strict=True):
        doc = json.loads(msg.body)
        assert list(doc) == ENVELOPE_KEYS
        assert doc["egress_id"] == rec.egress_id == egress_id(rec.source_id, SINK)
        assert doc["source_id"] == rec.source_id
        assert doc["source_type"] == rec.source_type.value
        assert (doc["netbox_id"], doc["egress_environment"]) == ("nb-test", "test")
        assert TS.match(doc["source_timestamp"]) and TS.match(doc["egress_timestamp"])
        assert before <= datetime.fromisoformat(doc["egress_timestamp"]) <= after
        assert doc["message"] == json.loads(rec.message)
        assert rec.message.encode() in msg.body  # NetBox's payload byte for byte
        # Native metadata: duplicate detection id, subject, content type, properties.
        assert msg.message_id == rec.egress_id
        assert msg.subject == rec.source_type.value
        assert msg.content_type == "application/json"
        assert msg.application_properties == routing_attributes(rec)
        assert msg.session_id is None
        assert msg.entity == QUEUE


async def test_topic_destination(peer: AmqpPeer) -> None:
    """A topic sink sends to the topic entity with the same metadata."""
    records = fixture_records(SINK)[:5]
    assert await send(bus_sink(peer, topic=TOPIC), records) == {}
    got = peer.received(TOPIC)
    assert ids(got) == [r.egress_id for r in records]
    assert [m.subject for m in got] == [r.source_type.value for r in records]
    assert peer.received(QUEUE) == []


async def test_session_id_is_the_object_key(peer: AmqpPeer) -> None:
    """With session on, every message's session_id is its object key (FIFO per object)."""
    records = [synthetic_record(obj, seq, SINK) for seq in (1, 2, 3) for obj in (1, 2)]
    assert await send(bus_sink(peer, queue=SESSIONS, session=True), records) == {}
    got = peer.received(SESSIONS)
    assert [(m.message_id, m.session_id) for m in got] == [
        (r.egress_id, r.object_key) for r in records]


async def test_session_entity_refuses_messages_without_session(peer: AmqpPeer) -> None:
    """A session-enabled entity refuses messages without session_id: permanent, not retried."""
    records = [synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)]
    failed = await send(bus_sink(peer, queue=SESSIONS), records)
    assert sorted(failed) == [0, 1]
    assert all(isinstance(e, PermanentError) for e in failed.values()), failed
    assert "amqp:not-allowed" in str(failed[0])
    assert peer.received(SESSIONS) == []


async def test_redelivery_carries_the_same_message_id(peer: AmqpPeer) -> None:
    """A record sent again (a retry or replay) has the same message_id, for duplicate detection."""
    record = synthetic_record(7, 1, SINK)
    sink = bus_sink(peer)
    await sink.open()
    try:
        await sink.write_batch([record])
        await sink.write_batch([record])
    finally:
        await sink.close()
    assert ids(peer.received(QUEUE)) == [record.egress_id, record.egress_id]


# -- batching -----------------------------------------------------------------------------


async def test_large_batches_are_split_at_the_link_size(peer: AmqpPeer) -> None:
    """Records beyond one link-sized batch go in several transfers, in record order."""
    records = [big_record(obj, seq, 6000) for seq in range(20) for obj in range(6)]
    assert await send(bus_sink(peer), records) == {}
    assert ids(peer.received(QUEUE)) == [r.egress_id for r in records]
    assert peer.transfers(QUEUE) >= 3  # 120 x ~6.5 KB against 256 KiB batches


async def test_oversized_record_fails_alone(peer: AmqpPeer) -> None:
    """A record too large for an empty batch is permanent; the others are delivered in order."""
    records = [big_record(1, 1, 100), big_record(1, 2, MAX_MESSAGE + 1000), big_record(1, 3, 100),
               big_record(2, 1, 100)]
    failed = await send(bus_sink(peer), records)
    assert list(failed) == [1]
    assert isinstance(failed[1], PermanentError)
    assert "exceeds the batch limit of 262144 bytes" in str(failed[1])
    assert ids(peer.received(QUEUE)) == [records[i].egress_id for i in (0, 2, 3)]


async def test_retryable_batch_failure_holds_back_everything_after_it(peer: AmqpPeer) -> None:
    """When the second batch is refused as busy, the first is delivered and the second and
    every later record fail with that one error instance, to be retried in order."""
    records = [big_record(obj, seq, 6000) for seq in range(20) for obj in range(6)]
    peer.fail(QUEUE, "com.microsoft:server-busy", "busy", times=1, after=1)
    failed = await send(bus_sink(peer), records)
    delivered = ids(peer.received(QUEUE))
    assert delivered == [r.egress_id for r in records[:len(delivered)]]
    assert 0 < len(delivered) < len(records)
    assert sorted(failed) == list(range(len(delivered), len(records)))
    errors = {id(e) for e in failed.values()}
    assert len(errors) == 1
    assert isinstance(failed[len(delivered)], RetryableError)
    assert peer.rejected(QUEUE) == 1


async def test_permanent_batch_failure_fails_only_that_batch(peer: AmqpPeer) -> None:
    """A batch refused permanently is reported alone; the batches after it are still sent."""
    records = [big_record(obj, seq, 6000) for seq in range(20) for obj in range(6)]
    peer.fail(QUEUE, "amqp:unauthorized-access", "denied", times=1, after=1)
    failed = await send(bus_sink(peer), records)
    assert failed and all(isinstance(e, PermanentError) for e in failed.values())
    lost = sorted(failed)
    assert lost == list(range(lost[0], lost[-1] + 1))  # exactly one contiguous batch
    assert lost[0] > 0 and lost[-1] < len(records) - 1
    assert ids(peer.received(QUEUE)) == [
        r.egress_id for i, r in enumerate(records) if i not in failed]


# -- error classification ---------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "sdk_error", "expected"), [
    ("com.microsoft:server-busy", "ServiceBusServerBusyError", RetryableError),
    ("amqp:resource-limit-exceeded", "ServiceBusQuotaExceededError", RetryableError),
    ("com.microsoft:timeout", "OperationTimeoutError", RetryableError),
    ("amqp:internal-error", "ServiceBusError", RetryableError),
    ("amqp:unauthorized-access", "ServiceBusAuthorizationError", PermanentError),
    ("amqp:not-found", "MessagingEntityNotFoundError", PermanentError),
    ("com.microsoft:entity-disabled", "MessagingEntityDisabledError", PermanentError),
    ("amqp:link:message-size-exceeded", "MessageSizeExceededError", PermanentError),
    ("amqp:not-allowed", "ServiceBusError", PermanentError),
])
async def test_rejections_are_classified_by_sdk_error_type(
    peer: AmqpPeer, condition: str, sdk_error: str, expected: type[Exception]
) -> None:
    """Each rejection the service can give maps, through the SDK's error type, to the contract."""
    peer.fail(SCRATCH, condition, f"scripted {condition}")
    records = [synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)]
    failed = await send(bus_sink(peer, queue=SCRATCH), records)
    assert sorted(failed) == [0, 1]
    assert failed[0] is failed[1]
    assert type(failed[0]) is expected, failed[0]
    assert f" {sdk_error}: " in str(failed[0]) and condition in str(failed[0])
    assert peer.received(SCRATCH) == []


async def test_unsettled_send_times_out_retryably(peer: AmqpPeer) -> None:
    """A transfer the service never settles times out after ``timeout``: retryable."""
    peer.fail(SCRATCH, None)
    sink = bus_sink(peer, queue=SCRATCH, timeout=1.0)
    started = time.monotonic()
    failed = await send(sink, [synthetic_record(1, 1, SINK)])
    assert time.monotonic() - started < 10
    assert isinstance(failed[0], RetryableError), failed
    assert "OperationTimeoutError" in str(failed[0])


async def test_deleted_entity_is_permanent(peer: AmqpPeer) -> None:
    """An entity deleted while the sink runs: MessagingEntityNotFoundError, permanent."""
    doomed = AmqpPeer([QUEUE]).start()
    try:
        sink = bus_sink(doomed)
        await sink.open()
        doomed.delete_entity(QUEUE)
        try:
            with pytest.raises(PartialBatchError) as info:
                await sink.write_batch([synthetic_record(1, 1, SINK)])
        finally:
            await sink.close()
    finally:
        doomed.stop()
    error = info.value.failed[0]
    assert isinstance(error, PermanentError) and "MessagingEntityNotFoundError" in str(error)


async def test_lost_connection_is_retryable_and_recovers() -> None:
    """A connection the service closes, or the service going away, is retryable; once it is
    back the same sink delivers again, without being reopened."""
    first = AmqpPeer([QUEUE]).start()
    sink = bus_sink(first)
    try:
        await sink.open()
        await sink.write_batch([synthetic_record(1, 1, SINK)])
        first.drop_connections()
        await asyncio.sleep(0.2)  # let the client's connection see the close
        for _ in range(2):  # the SDK notices the closed connection on this send or reconnects
            try:
                await sink.write_batch([synthetic_record(3, 1, SINK)])
                break
            except PartialBatchError as err:
                assert isinstance(err.failed[0], RetryableError), err.failed
        assert ids(first.received(QUEUE))[-1] == synthetic_record(3, 1, SINK).egress_id
        first.stop()
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch([synthetic_record(1, 2, SINK), synthetic_record(2, 1, SINK)])
        assert all(isinstance(e, RetryableError) for e in info.value.failed.values())
        assert sorted(info.value.failed) == [0, 1]
        with AmqpPeer([QUEUE], port=first.port, key=first.key) as second:
            await sink.write_batch([synthetic_record(1, 2, SINK), synthetic_record(2, 1, SINK)])
            assert ids(second.received(QUEUE)) == [
                synthetic_record(1, 2, SINK).egress_id, synthetic_record(2, 1, SINK).egress_id]
    finally:
        await sink.close()
        first.stop()


@pytest.mark.parametrize(("error", "expected"), [
    (ServiceBusError("link trouble", retryable=True), RetryableError),
    (ServiceBusError("bad request", retryable=False), PermanentError),
    (ServiceBusError("refused", retryable=True, condition=b"amqp:not-allowed"), PermanentError),
    (ServiceBusError("refused", retryable=False, condition=b"com.microsoft:argument-error"),
     PermanentError),
    (ServiceBusError("Handler failed", error=ServiceRequestError("no route to the token host")),
     RetryableError),
    (ServiceBusError("Handler failed", error=ClientAuthenticationError("no credential")),
     PermanentError),
    (ServiceBusQuotaExceededError(), RetryableError),
    (MessagingEntityDisabledError(), PermanentError),
    (ServiceBusAuthenticationError(), PermanentError),
    (ServiceBusConnectionError(), RetryableError),
    (ServiceBusCommunicationError(), RetryableError),
])
def test_classify_generic_and_wrapped_errors(
    error: ServiceBusError, expected: type[Exception]
) -> None:
    """Errors the peer cannot provoke: by type first, then condition, cause and the SDK flag."""
    assert type(classify(error, "sending")) is expected


# -- open: fail fast ------------------------------------------------------------------------


async def test_wrong_key_fails_fast_without_leaking_it(peer: AmqpPeer) -> None:
    """A key the service does not accept fails open(), naming the sink, never the key."""
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    sink = bus_sink(peer, key=wrong)
    started = time.monotonic()
    with pytest.raises(SinkConfigError) as info:
        await sink.open()
    await sink.close()
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert text.startswith(f"sinks.{SINK}: cannot open queue '{QUEUE}' on 127.0.0.1:")
    assert "ServiceBusAuthenticationError" in text and "401" in text
    assert wrong not in text and peer.key not in text
    assert [status for _, status in peer.tokens()] == [401]


async def test_missing_entity_fails_fast_naming_it(peer: AmqpPeer) -> None:
    """Service Bus answers the token for a missing queue with 404: open() fails, naming it."""
    with pytest.raises(SinkConfigError, match=r"sinks\.bus: cannot open topic 'nope' on .*"
                                              r"404.*could not be found"):
        await bus_sink(peer, topic="nope").open()


async def test_nothing_listening_fails_fast() -> None:
    """No service at the endpoint: open() fails at once with SinkConfigError."""
    settings = ServiceBusSettings(
        connection_string=SecretStr(f"Endpoint=sb://127.0.0.1:{free_port()};SharedAccessKeyName=k;"
                                    "SharedAccessKey=c2VjcmV0;UseDevelopmentEmulator=true"),
        queue=QUEUE, timeout=5)
    sink = ServiceBusSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    with pytest.raises(SinkConfigError, match="ServiceBusConnectionError"):
        await sink.open()
    await sink.close()


@pytest.mark.parametrize("connection_string", [
    "not a connection string",
    "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;UseDevelopmentEmulator=true",
    "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=other",
])
async def test_malformed_connection_string_fails_at_open(connection_string: str) -> None:
    """A connection string the SDK refuses is a configuration error, without its contents."""
    settings = ServiceBusSettings(connection_string=SecretStr(connection_string), queue=QUEUE)
    sink = ServiceBusSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    with pytest.raises(SinkConfigError, match=rf"^sinks\.{SINK}: ") as info:
        await sink.open()
    await sink.close()
    assert "c2VjcmV0" not in str(info.value)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "problem"), [
    ({"queue": "q"}, "exactly one of connection_string or fully_qualified_namespace"),
    ({"connection_string": "x", "fully_qualified_namespace": "ns.servicebus.windows.net",
      "queue": "q"}, "exactly one of connection_string or fully_qualified_namespace"),
    ({"connection_string": "x"}, "exactly one of queue or topic"),
    ({"connection_string": "x", "queue": "q", "topic": "t"}, "exactly one of queue or topic"),
    ({"connection_string": "x", "queue": "q", "sessions": True}, "sinks.bus.sessions"),
    ({"connection_string": "x", "queue": "q", "timeout": 0}, "sinks.bus.timeout"),
])
def test_settings_are_validated_naming_the_key(options: dict[str, Any], problem: str) -> None:
    """Bad settings fail at config load, naming sinks.<name>."""
    from schemas.config import SinkSettings

    with pytest.raises(SinkConfigError, match=re.escape(problem)):
        validate_sink_settings(SINK, SinkSettings(type="servicebus", **options))


def test_connection_string_is_secret() -> None:
    """The connection string never shows in the settings' or the sink's repr."""
    secret = "Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=TOPSECRET"
    settings = ServiceBusSettings(connection_string=SecretStr(secret), topic="t")
    sink = ServiceBusSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    assert "TOPSECRET" not in repr(settings) and "TOPSECRET" not in repr(sink)
    assert "TOPSECRET" not in str(settings.model_dump())


async def test_namespace_with_default_credential_fails_fast_when_unreachable() -> None:
    """fully_qualified_namespace uses DefaultAzureCredential; an unreachable namespace fails
    at open() with SinkConfigError and the credential is closed again."""
    settings = ServiceBusSettings(fully_qualified_namespace="127.0.0.1", queue=QUEUE, timeout=5)
    sink = ServiceBusSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    started = time.monotonic()
    with pytest.raises(SinkConfigError, match=r"sinks\.bus: cannot open queue 'orders'"):
        await sink.open()
    assert time.monotonic() - started < 15
    await sink.close()


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.kafka
def test_captured_webhooks_reach_the_queue(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path, peer: AmqpPeer
) -> None:
    """Captured NetBox webhooks -> nbstream ingest -> process -> sink (real processes, real
    broker) -> the Service Bus peer: each event once, as the envelope, with its metadata, in
    per-object order."""
    requests = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    payloads = [json.loads(r["body"]) for r in requests]
    ingest_port = free_port()
    config = {
        **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
        "sinks": {SINK: {"type": "servicebus", "connection_string": peer.connection_string(),
                         "queue": E2E}},
        "rules": [{"name": "everything", "sinks": [SINK],
                   "event_types": ["object_created", "object_updated", "object_deleted",
                                   "job_completed"]}],
    }
    ensure_topics(parse_settings(config, env={}))
    with nbstream_processes(config, tmp_path, ["ingest"], ["process"], ["sink", SINK],
                            ingest_port=ingest_port) as procs:
        with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
            for req in requests:
                headers = {k: v for k, v in req["headers"]
                           if k in ("Content-Type", "X-Hook-Signature")}
                r = client.post("/webhook", content=req["body"].encode(), headers=headers)
                assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(peer.received(E2E)) < len(payloads):
            assert_alive(procs)
            time.sleep(0.1)
        time.sleep(1.0)  # a duplicate would arrive now
        got = peer.received(E2E)
        assert_alive(procs)

    assert len(got) == len(payloads)
    assert len({m.message_id for m in got}) == len(got)
    canonical = {"created": "object_created", "updated": "object_updated",
                 "deleted": "object_deleted", "job_ended": "job_completed"}
    envelopes = []
    for msg in got:
        env = json.loads(msg.body)
        envelopes.append(env)
        assert list(env) == ENVELOPE_KEYS
        assert env["egress_id"] == egress_id(env["source_id"], SINK) == msg.message_id
        assert (env["netbox_id"], env["netbox_version"], env["egress_environment"]) == (
            "nb-e2e", "4.6.8", "e2e")
        assert TS.match(env["egress_timestamp"])
        assert env["source_type"] == canonical[env["message"]["event"]] == msg.subject
        assert msg.content_type == "application/json" and msg.entity == E2E
        props = msg.application_properties
        assert props["egress_id"] == msg.message_id
        assert props["source_type"] == env["source_type"]
        assert props["netbox_id"] == "nb-e2e"
        assert props["object_type"] == env["message"]["object_type"]
        assert props["event"] == env["message"]["event"]
    assert sorted(json.dumps(e["message"], sort_keys=True) for e in envelopes) == sorted(
        json.dumps(p, sort_keys=True) for p in payloads)
    assert {m.application_properties["object_key"] for m in got} == {key(p) for p in payloads}

    def per_key(items: list[dict[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in items:
            out.setdefault(key(p), []).append(p["timestamp"])
        return out

    assert per_key([e["message"] for e in envelopes]) == per_key(payloads)
