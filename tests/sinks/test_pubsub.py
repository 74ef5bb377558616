"""The pubsub sink against Google's own Pub/Sub fake (pstest, built with Go and run locally).

Everything published is read back through an ordered subscription on the fake: bodies,
attributes, ordering keys and per-object order. Failures are the fake's own (a missing topic, a
stopped server) or injected per topic by the fake's reactor hook (see servers/pstest/main.go).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.iam.v1 import iam_policy_pb2
from google.pubsub_v1.types import GetTopicRequest, Topic
from pydantic import ValidationError

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.envelope import format_timestamp
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
from sinks.pubsub import PubSubSettings, PubSubSink
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import assert_alive, e2e_base, nbstream_processes
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.records import fixture_records, synthetic_record
from tests.sinks.servers.pstest import FakeClients, PsTestServer, build_pstest

SINK = "gcp"
PROJECT = "nbstream-test"
NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
ENVELOPE_KEYS = {"version", "source_id", "source_timestamp", "source_type", "source_type_docs",
                 "netbox_id", "netbox_version", "egress_environment", "egress_id",
                 "egress_timestamp", "egress_version", "message"}

# Topics whose every Publish the fake fails with this gRPC code, and the class we expect.
FAILING = {
    "RESOURCE_EXHAUSTED": RetryableError,
    "UNAVAILABLE": RetryableError,
    "DEADLINE_EXCEEDED": RetryableError,
    "INTERNAL": RetryableError,
    "ABORTED": RetryableError,
    "UNKNOWN": RetryableError,
    "PERMISSION_DENIED": PermanentError,
    "UNAUTHENTICATED": PermanentError,
    "NOT_FOUND": PermanentError,
    "INVALID_ARGUMENT": PermanentError,
    "FAILED_PRECONDITION": PermanentError,
}
FLAKY_KEY = "dcim.device:2"


def topic_path(topic: str) -> str:
    """Return the full resource name of ``topic`` in the test project."""
    return f"projects/{PROJECT}/topics/{topic}"


def failing_topic(code: str) -> str:
    """Return the id of the topic the fake fails with ``code``."""
    return f"fail-{code.lower().replace('_', '-')}"


FAULTS = [
    *(f"topic={topic_path(failing_topic(code))},code={code}" for code in FAILING),
    f"topic={topic_path('throttled')},code=RESOURCE_EXHAUSTED,retry_delay=2500ms",
    f"topic={topic_path('flaky')},key={FLAKY_KEY},code=UNAVAILABLE,times=1",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[PsTestServer]:
    """The fake, built if needed and started for this module, with the topics' faults."""
    with PsTestServer(build_pstest(), FAULTS) as server:
        clients = FakeClients(server.host)
        try:
            for topic in [*(failing_topic(c) for c in FAILING), "throttled", "flaky"]:
                clients.create_topic(topic_path(topic))
        finally:
            clients.close()
        yield server


@pytest.fixture
def clients(fake: PsTestServer) -> Iterator[FakeClients]:
    """Admin and subscriber clients on the fake."""
    c = FakeClients(fake.host)
    try:
        yield c
    finally:
        c.close()


def pubsub_sink(host: str, topic: str, **options: Any) -> PubSubSink:
    """Return an unopened sink publishing to ``topic`` on the fake at ``host``."""
    settings = PubSubSettings(project=PROJECT, topic=topic, emulator_host=host, **options)
    return PubSubSink(SINK, settings, SinkContext(environment="test", sink=SINK, now=lambda: NOW))


class Destination:
    """A fresh topic with an ordered subscription on the fake; remembers what it read."""

    def __init__(self, clients: FakeClients, topic: str | None = None) -> None:
        self.clients = clients
        self.topic = topic or f"t-{uuid.uuid4().hex[:12]}"
        self.subscription = f"projects/{PROJECT}/subscriptions/{self.topic}"
        if topic is None:
            clients.create_topic(topic_path(self.topic))
        clients.create_subscription(self.subscription, topic_path(self.topic))
        self.messages: list[Any] = []

    def read(self) -> list[Any]:
        """Return every message received so far, each key's messages in order."""
        self.messages += self.clients.pull_all(self.subscription)
        return self.messages


class PubSubHarness:
    """The conformance harness: a fresh topic; a missing one; topics the fake fails."""

    sink_name = SINK

    def __init__(self, fake: PsTestServer, clients: FakeClients) -> None:
        self.host = fake.host
        self.destination = Destination(clients)

    def make_sink(self) -> Sink[Any]:
        return pubsub_sink(self.host, self.destination.topic)

    def make_misconfigured_sink(self) -> Sink[Any]:
        return pubsub_sink(self.host, f"missing-{uuid.uuid4().hex[:8]}")

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        code = "UNAVAILABLE" if error_class == "retryable" else "PERMISSION_DENIED"
        return pubsub_sink(self.host, failing_topic(code))

    async def received(self) -> list[str]:
        return [json.loads(m.data)["egress_id"] for m in self.destination.read()]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, fake: PsTestServer, clients: FakeClients) -> None:
    """The pubsub sink passes the checks every sink must pass."""
    await check(PubSubHarness(fake, clients))


def by_key(messages: list[Any]) -> dict[str, list[str]]:
    """Return each ordering key's egress ids in the order they were read."""
    out: dict[str, list[str]] = {}
    for m in messages:
        out.setdefault(m.ordering_key, []).append(json.loads(m.data)["egress_id"])
    return out


def sent_by_key(records: list[SinkRecord]) -> dict[str, list[str]]:
    """Return each object's egress ids in batch order."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.object_key, []).append(r.egress_id)
    return out


async def test_delivers_envelopes_attributes_and_ordering_keys(
    fake: PsTestServer, clients: FakeClients
) -> None:
    """Every captured payload arrives once as the envelope, with routing attributes, its object
    key as ordering key, and each object's events in order."""
    records = fixture_records(SINK)
    dest = Destination(clients)
    sink = pubsub_sink(fake.host, dest.topic)
    await sink.open()
    try:
        await sink.write_batch(records)
    finally:
        await sink.close()
    messages = dest.read()
    assert len(messages) == len(records)
    by_egress = {r.egress_id: r for r in records}
    for m in messages:
        body = json.loads(m.data)
        record = by_egress[body["egress_id"]]
        assert set(body) == ENVELOPE_KEYS
        assert body["message"] == json.loads(record.message)
        assert body["source_id"] == record.source_id
        assert body["source_type"] == record.source_type.value
        assert body["egress_timestamp"] == format_timestamp(NOW)
        assert dict(m.attributes) == routing_attributes(record)
        assert m.ordering_key == record.object_key
    assert by_key(messages) == sent_by_key(records)


@pytest.mark.parametrize("bound", [{"max_messages": 3}, {"max_bytes": 1000}],
                         ids=["max_messages", "max_bytes"])
async def test_order_kept_across_publish_requests(
    bound: dict[str, int], fake: PsTestServer, clients: FakeClients
) -> None:
    """With requests bounded to a few messages (or to one, by size), two objects' 20 updates
    each still arrive in order."""
    records = [synthetic_record(obj, seq, SINK) for seq in range(1, 21) for obj in (7, 8)]
    dest = Destination(clients)
    sink = pubsub_sink(fake.host, dest.topic, **bound)
    await sink.open()
    try:
        await sink.write_batch(records[:20])
        await sink.write_batch(records[20:])
    finally:
        await sink.close()
    assert by_key(dest.read()) == sent_by_key(records)


@pytest.mark.parametrize("code", sorted(FAILING))
async def test_error_classification(code: str, fake: PsTestServer) -> None:
    """A Publish the service fails with ``code`` is reported with the mapped class for every
    record, each object's later records held back with its first record's error."""
    records = [synthetic_record(obj, seq, SINK) for seq in (1, 2) for obj in (1, 2)]
    sink = pubsub_sink(fake.host, failing_topic(code))
    await sink.open()
    try:
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch(records)
    finally:
        await sink.close()
    failed = info.value.failed
    assert sorted(failed) == [0, 1, 2, 3]
    assert all(type(e) is FAILING[code] for e in failed.values())
    assert failed[0] is failed[2] and failed[1] is failed[3]  # held back behind seq 1
    assert topic_path(failing_topic(code)) in str(failed[0])


async def test_retry_info_becomes_retry_after(fake: PsTestServer) -> None:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo delay sets retry_after to that delay."""
    sink = pubsub_sink(fake.host, "throttled")
    await sink.open()
    try:
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch([synthetic_record(1, 1, SINK)])
    finally:
        await sink.close()
    error = info.value.failed[0]
    assert isinstance(error, RetryableError) and error.retry_after == 2.5


async def test_failed_object_held_back_others_delivered(
    fake: PsTestServer, clients: FakeClients
) -> None:
    """One object's failed publish fails only that object's records (held back with one error);
    the others are delivered; the retry of the held records then goes through, in order."""
    dest = Destination(clients, "flaky")
    records = [synthetic_record(obj, seq, SINK) for seq in (1, 2, 3) for obj in (1, 2, 3)]
    flaky = [i for i, r in enumerate(records) if r.object_key == FLAKY_KEY]
    sink = pubsub_sink(fake.host, "flaky")
    await sink.open()
    try:
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch(records)
        failed = info.value.failed
        assert sorted(failed) == flaky
        assert isinstance(failed[flaky[0]], RetryableError)
        assert all(failed[i] is failed[flaky[0]] for i in flaky)
        first = by_key(dest.read())
        assert FLAKY_KEY not in first
        await sink.write_batch([records[i] for i in flaky])  # the runner's retry
    finally:
        await sink.close()
    assert by_key(dest.read()) == sent_by_key(records)


async def test_open_fails_for_missing_topic_naming_it(fake: PsTestServer) -> None:
    """A topic that does not exist fails open() with the key and the topic's path."""
    sink = pubsub_sink(fake.host, "nowhere")
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.topic: topic "
                       rf"{re.escape(topic_path('nowhere'))} on the emulator .* does not exist"):
        await sink.open()
    await sink.close()


async def test_open_fails_when_unreachable() -> None:
    """Nothing listening at the endpoint fails open() within open_timeout."""
    sink = pubsub_sink(f"127.0.0.1:{free_port()}", "anything", open_timeout=3)
    started = time.monotonic()
    with pytest.raises(SinkConfigError, match="cannot reach topic"):
        await sink.open()
    assert time.monotonic() - started < 10
    await sink.close()


async def test_server_gone_is_retryable(tmp_path: Path) -> None:
    """When the service goes away after open(), every record fails retryably."""
    with PsTestServer(build_pstest(), log_dir=tmp_path) as server:
        admin = FakeClients(server.host)
        admin.create_topic(topic_path("short-lived"))
        admin.close()
        sink = pubsub_sink(server.host, "short-lived", timeout=5)
        await sink.open()
    try:
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch([synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)])
    finally:
        await sink.close()
    assert sorted(info.value.failed) == [0, 1]
    assert all(isinstance(e, RetryableError) for e in info.value.failed.values())


class DeniedTopic:
    """A gRPC server answering GetTopic with PERMISSION_DENIED and TestIamPermissions with
    ``granted``: what Pub/Sub does for credentials holding only roles/pubsub.publisher. (The
    fake implements no IAM, so this one case has its own small server.)"""

    def __init__(self, granted: list[str]) -> None:
        def get_topic(request: GetTopicRequest, context: grpc.ServicerContext) -> Topic:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "pubsub.topics.get denied")

        def test_iam(request: Any, context: grpc.ServicerContext) -> Any:
            asked = list(request.permissions)
            return iam_policy_pb2.TestIamPermissionsResponse(
                permissions=[p for p in asked if p in granted])

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", {
                "GetTopic": grpc.unary_unary_rpc_method_handler(
                    get_topic, request_deserializer=GetTopicRequest.deserialize,
                    response_serializer=Topic.serialize)}),
            grpc.method_handlers_generic_handler("google.iam.v1.IAMPolicy", {
                "TestIamPermissions": grpc.unary_unary_rpc_method_handler(
                    test_iam,
                    request_deserializer=iam_policy_pb2.TestIamPermissionsRequest.FromString,
                    response_serializer=(
                        iam_policy_pb2.TestIamPermissionsResponse.SerializeToString))}),
        ])
        self.host = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def __enter__(self) -> DeniedTopic:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


async def test_publish_only_credentials_pass_open() -> None:
    """Credentials that may publish but not read the topic (roles/pubsub.publisher) open."""
    with DeniedTopic(["pubsub.topics.publish"]) as server:
        sink = pubsub_sink(server.host, "events")
        await sink.open()
        await sink.close()


async def test_credentials_that_may_not_publish_fail_open() -> None:
    """Credentials without pubsub.topics.publish fail open(), naming the permission."""
    with DeniedTopic([]) as server:
        sink = pubsub_sink(server.host, "events")
        with pytest.raises(SinkConfigError, match="may not publish .* pubsub.topics.publish"):
            await sink.open()
        await sink.close()


async def test_unreadable_credentials_file_fails_open(tmp_path: Path) -> None:
    """A credentials_file that is missing or not a key fails open() naming the key."""
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        if path.name == "bad.json":
            path.write_text('{"type": "service_account"}')
        settings = PubSubSettings(project=PROJECT, topic="events", credentials_file=path)
        sink = PubSubSink(SINK, settings, SinkContext(environment="test", sink=SINK))
        with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.credentials_file"):
            await sink.open()
        await sink.close()


@pytest.mark.parametrize("options", [
    {"topic": "projects/p/topics/t"},
    {"topic": "goog-reserved"},
    {"project": "a/b"},
    {"emulator_host": "http://localhost:8085"},
    {"emulator_host": "localhost:8085", "credentials_file": "key.json"},
    {"max_messages": 1001},
    {"unknown": 1},
])
def test_settings_refuse(options: dict[str, Any]) -> None:
    """Invalid settings are refused when the config is validated."""
    with pytest.raises(ValidationError):
        PubSubSettings.model_validate({"project": PROJECT, "topic": "events", **options})


@pytest.mark.kafka
@pytest.mark.e2e
def test_end_to_end(kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
                    fake: PsTestServer, clients: FakeClients) -> None:
    """Captured NetBox webhooks -> ingest -> processor -> ``nbstream sink gcp`` -> the fake:
    each routed event arrives once, as the envelope of its original payload, with routing
    attributes and ordering key, each object's events in NetBox's order."""
    dest = Destination(clients)
    ingest_port = free_port()
    config = {
        **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
        "sinks": {SINK: {"type": "pubsub", "project": PROJECT, "topic": dest.topic,
                         "emulator_host": fake.host}},
        "rules": [{"name": "everything", "sinks": [SINK],
                   "event_types": ["object_created", "object_updated", "object_deleted",
                                   "job_completed"]}],
    }
    ensure_topics(parse_settings(config, env={}))
    requests = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    payloads = [json.loads(r["body"]) for r in requests]
    with nbstream_processes(config, tmp_path, ["ingest"], ["process"], ["sink", SINK],
                            ingest_port=ingest_port) as procs:
        with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
            for req in requests:
                headers = {k: v for k, v in req["headers"]
                           if k in ("Content-Type", "X-Hook-Signature")}
                r = client.post("/webhook", content=req["body"].encode(), headers=headers)
                assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while len(dest.read()) < len(payloads) and time.monotonic() < deadline:
            assert_alive(procs)
            time.sleep(0.2)
        time.sleep(1.0)  # anything extra (a duplicate) would arrive now
        messages = dest.read()
        assert_alive(procs)

    assert len(messages) == len(payloads)
    envelopes = [json.loads(m.data) for m in messages]
    assert len({e["egress_id"] for e in envelopes}) == len(payloads)
    originals = {json.dumps(p, sort_keys=True): p for p in payloads}
    for m, env in zip(messages, envelopes, strict=True):
        assert set(env) == ENVELOPE_KEYS
        original = originals[json.dumps(env["message"], sort_keys=True)]
        assert env["message"] == original
        assert (env["netbox_id"], env["egress_environment"]) == ("nb-e2e", "e2e")
        data = original.get("data") or {}
        key = f"{original['object_type']}:{data.get('id', '') if isinstance(data, dict) else ''}"
        assert m.ordering_key == key
        assert dict(m.attributes) == {
            "source_type": env["source_type"], "object_type": original["object_type"],
            "netbox_id": "nb-e2e", "event": original["event"], "object_key": key,
            "egress_id": env["egress_id"]}
    assert sorted(originals) == sorted(json.dumps(e["message"], sort_keys=True)
                                       for e in envelopes)

    def timestamps(items: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, p in items:
            out.setdefault(key, []).append(p["timestamp"])
        return out

    sent = [(f"{p['object_type']}:{(p.get('data') or {}).get('id', '')}", p) for p in payloads]
    got = [(m.ordering_key, e["message"]) for m, e in zip(messages, envelopes, strict=True)]
    assert timestamps(got) == timestamps(sent)
