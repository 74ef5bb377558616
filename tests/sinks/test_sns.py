"""The SNS sink against a real moto server: bodies, attributes, FIFO, filters, errors, end to end.

What arrived is read back from SQS queues subscribed to the topics (raw delivery and the SNS
JSON notification). Per-entry results moto cannot produce (a retryable ``Failed`` entry) are
exercised with botocore's Stubber on a real client, in addition to the server tests.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.identity import egress_id
from schemas.records import SinkRecord
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
)
from sinks.sns import (
    MAX_ENTRIES,
    SnsSettings,
    SnsSink,
    classify_client_error,
    classify_failed_entry,
    plan_rounds,
)
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import assert_alive, e2e_base, nbstream_processes
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.records import fixture_records, record_from_payload, synthetic_record
from tests.sinks.servers.moto_server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MotoServer,
    TcpProxy,
    moto_server,
)

SINK = "events"
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ENVELOPE_KEYS = [
    "version", "source_id", "source_timestamp", "source_type", "source_type_docs", "netbox_id",
    "netbox_version", "egress_environment", "egress_id", "egress_timestamp", "egress_version",
    "message",
]
ATTRIBUTES = {"source_type", "object_type", "netbox_id", "event", "object_key", "egress_id"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real moto server for this module; failing to start fails the tests, never skips."""
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def sns_sink(topic_arn: str, endpoint_url: str, cls: type[SnsSink] = SnsSink,
             **fields: Any) -> SnsSink:
    """Return an unopened SNS sink with the test credentials."""
    settings = SnsSettings.model_validate({
        "topic_arn": topic_arn, "endpoint_url": endpoint_url, "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY, **fields})
    return cls(SINK, settings, SinkContext(environment="test", sink=SINK))


async def send(sink: Sink[Any], *batches: list[SinkRecord]) -> dict[int, Exception]:
    """Open ``sink``, write each batch, close it; return the last batch's failures by index."""
    failed: dict[int, Exception] = {}
    await sink.open()
    try:
        for batch in batches:
            try:
                await sink.write_batch(batch)
                failed = {}
            except PartialBatchError as err:
                failed = dict(err.failed)
    finally:
        await sink.close()
    return failed


class AfterOpen(SnsSink):
    """An SNS sink that breaks its own destination right after opening (a test action)."""

    action: Callable[[], None] = staticmethod(lambda: None)

    async def open(self) -> None:
        await super().open()
        type(self).action()


def after_open(action: Callable[[], None]) -> type[SnsSink]:
    """Return an AfterOpen subclass running ``action`` once the sink is open."""
    return type("BrokenAfterOpen", (AfterOpen,), {"action": staticmethod(action)})


def envelopes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the envelopes of raw-delivered SQS messages."""
    return [json.loads(m["Body"]) for m in messages]


def per_key(records: list[SinkRecord], egress_ids: list[str]) -> dict[str, list[str]]:
    """Return, per object key, the egress ids in the order they appear in ``egress_ids``."""
    key_of = {r.egress_id: r.object_key for r in records}
    out: dict[str, list[str]] = {}
    for eid in egress_ids:
        out.setdefault(key_of[eid], []).append(eid)
    return out


# -- conformance --------------------------------------------------------------------------


class SnsHarness:
    """The conformance harness: a fresh topic with a raw-delivery queue on the moto server."""

    sink_name = SINK

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.topic = moto.create_topic("conf")
        self.queue = moto.subscribe_queue(self.topic)
        self.got: list[str] = []

    def make_sink(self) -> Sink[Any]:
        return sns_sink(self.topic, self.moto.endpoint_url)

    def make_misconfigured_sink(self) -> Sink[Any]:
        return sns_sink(self.topic.rsplit(":", 1)[0] + ":missing-topic", self.moto.endpoint_url)

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        if error_class == "retryable":
            # The network to SNS goes away after start-up: connection refused.
            proxy = TcpProxy(int(self.moto.endpoint_url.rsplit(":", 1)[1]))
            return sns_sink(self.topic, proxy.endpoint_url, after_open(proxy.cut))
        # The topic is deleted while the sink runs: NotFound, permanent.
        doomed = self.moto.create_topic("doomed")
        delete = lambda: self.moto.client("sns").delete_topic(TopicArn=doomed)  # noqa: E731
        return sns_sink(doomed, self.moto.endpoint_url, after_open(delete))

    async def received(self) -> list[str]:
        self.got += [e["egress_id"] for e in envelopes(self.moto.drain(self.queue, timeout=2))]
        return list(self.got)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, moto: MotoServer) -> None:
    """The SNS sink passes the checks every sink must pass."""
    await check(SnsHarness(moto))


# -- bodies and attributes ------------------------------------------------------------------


async def test_raw_delivery_envelopes_and_attributes(moto: MotoServer) -> None:
    """Raw delivery: each captured NetBox event is the envelope, with String routing attributes."""
    topic = moto.create_topic()
    queue = moto.subscribe_queue(topic, raw=True)
    records = fixture_records(SINK)
    before = datetime.now(UTC)
    assert await send(sns_sink(topic, moto.endpoint_url), records) == {}
    after = datetime.now(UTC)
    messages = moto.drain(queue, len(records))
    assert len(messages) == len(records)
    by_id = {r.egress_id: r for r in records}
    for m in messages:
        doc = json.loads(m["Body"])
        rec = by_id.pop(doc["egress_id"])
        assert list(doc) == ENVELOPE_KEYS
        assert doc["version"] == 1 and doc["source_id"] == rec.source_id
        assert doc["egress_id"] == egress_id(rec.source_id, SINK)
        assert doc["source_type"] == rec.source_type.value
        assert TS_FORMAT.match(doc["egress_timestamp"]) and TS_FORMAT.match(
            doc["source_timestamp"])
        assert before <= datetime.fromisoformat(doc["egress_timestamp"]) <= after
        assert doc["message"] == json.loads(rec.message)
        assert rec.message in m["Body"]  # NetBox's payload spliced byte for byte
        attrs = {k: (v["DataType"], v["StringValue"]) for k, v in m["MessageAttributes"].items()}
        assert attrs == {
            "source_type": ("String", rec.source_type.value),
            "object_type": ("String", rec.object_type),
            "netbox_id": ("String", "nb-test"),
            "event": ("String", json.loads(rec.message)["event"]),
            "object_key": ("String", rec.object_key),
            "egress_id": ("String", rec.egress_id),
        }
    assert by_id == {}


async def test_notification_delivery_wraps_envelope(moto: MotoServer) -> None:
    """Without raw delivery, SQS gets SNS's JSON notification: the envelope as Message, the
    attributes as MessageAttributes."""
    topic = moto.create_topic()
    queue = moto.subscribe_queue(topic, raw=False)
    records = fixture_records(SINK)[:7]
    assert await send(sns_sink(topic, moto.endpoint_url), records) == {}
    notes = [json.loads(m["Body"]) for m in moto.drain(queue, len(records))]
    assert len(notes) == len(records)
    by_id = {r.egress_id: r for r in records}
    for note in notes:
        assert note["Type"] == "Notification" and note["TopicArn"] == topic
        doc = json.loads(note["Message"])
        rec = by_id.pop(doc["egress_id"])
        assert doc["message"] == json.loads(rec.message)
        attrs = {k: (v["Type"], v["Value"]) for k, v in note["MessageAttributes"].items()}
        assert set(attrs) == ATTRIBUTES
        assert attrs["object_key"] == ("String", rec.object_key)
        assert attrs["egress_id"] == ("String", rec.egress_id)
        assert attrs["source_type"] == ("String", rec.source_type.value)
    assert by_id == {}


async def test_filter_policy_selects_on_attributes(moto: MotoServer) -> None:
    """A subscription filter on object_type gets only that type; an unfiltered one gets all."""
    topic = moto.create_topic()
    devices = moto.subscribe_queue(topic, filter_policy={"object_type": ["dcim.device"]})
    created = moto.subscribe_queue(
        topic, filter_policy={"object_type": ["ipam.ipaddress"], "event": ["updated"]})
    everything = moto.subscribe_queue(topic)
    records = [synthetic_record(i, 1, SINK, "dcim.device" if i % 2 else "ipam.ipaddress")
               for i in range(1, 11)]
    assert await send(sns_sink(topic, moto.endpoint_url), records) == {}
    want_devices = {r.egress_id for r in records if r.object_type == "dcim.device"}
    want_ips = {r.egress_id for r in records if r.object_type == "ipam.ipaddress"}
    got_devices = {e["egress_id"] for e in envelopes(moto.drain(devices, len(want_devices)))}
    got_ips = {e["egress_id"] for e in envelopes(moto.drain(created, len(want_ips)))}
    got_all = envelopes(moto.drain(everything, len(records)))
    assert got_devices == want_devices and got_ips == want_ips
    assert len(got_all) == len(records)
    assert moto.drain(devices, timeout=0.3) == []


# -- FIFO -----------------------------------------------------------------------------------


async def test_fifo_order_groups_and_deduplication(moto: MotoServer) -> None:
    """FIFO: group = object key, dedup id = egress_id; order kept per object across PublishBatch
    calls and rounds, and a replayed record is delivered once."""
    topic = moto.create_topic("fifo", fifo=True)
    queue = moto.subscribe_queue(topic)
    # One busy object (23 updates: three rounds of calls) among four others.
    records = [synthetic_record(9, seq, SINK) for seq in range(1, 24)]
    records += [synthetic_record(obj, seq, SINK) for seq in range(1, 4) for obj in range(1, 5)]
    replay = records[:3] + records[-2:]
    assert await send(sns_sink(topic, moto.endpoint_url), records, replay) == {}
    messages = moto.drain(queue, len(records))
    assert moto.drain(queue, timeout=0.5) == []
    ids = [json.loads(m["Body"])["egress_id"] for m in messages]
    assert Counter(ids).most_common(1)[0][1] == 1  # the replay was deduplicated
    assert sorted(ids) == sorted(r.egress_id for r in records)
    assert per_key(records, ids) == per_key(records, [r.egress_id for r in records])
    by_id = {r.egress_id: r for r in records}
    for m, eid in zip(messages, ids, strict=True):
        assert m["Attributes"]["MessageGroupId"] == by_id[eid].object_key
        assert m["Attributes"]["MessageDeduplicationId"] == eid


async def test_order_kept_per_object_on_standard_topic(moto: MotoServer) -> None:
    """Interleaved objects, one of them busier than a call holds, arrive in order per object."""
    topic = moto.create_topic()
    queue = moto.subscribe_queue(topic)
    records = [synthetic_record(obj, seq, SINK) for seq in range(1, 13) for obj in range(1, 6)]
    records += [synthetic_record(100 + i, 1, SINK) for i in range(25)]
    assert await send(sns_sink(topic, moto.endpoint_url, max_concurrency=4), records) == {}
    ids = [e["egress_id"] for e in envelopes(moto.drain(queue, len(records)))]
    assert sorted(ids) == sorted(r.egress_id for r in records)
    assert per_key(records, ids) == per_key(records, [r.egress_id for r in records])


# -- errors against the server --------------------------------------------------------------


def oversized(obj: int) -> SinkRecord:
    """Return a record whose envelope exceeds SNS's 256 KiB message limit."""
    payload = {"event": "updated", "timestamp": "2026-11-22T10:30:00+00:00",
               "object_type": "dcim.device", "data": {"id": obj, "comments": "x" * 270_000}}
    return record_from_payload(json.dumps(payload), SINK)


async def test_oversized_entry_fails_alone_permanently(moto: MotoServer) -> None:
    """SNS rejects one entry of a batch (a Failed result): only that index fails, permanently,
    and the rest of the batch, its own object's later records included, is delivered."""
    topic = moto.create_topic()
    queue = moto.subscribe_queue(topic)
    big = oversized(1)
    after_big = synthetic_record(1, 5, SINK)
    records = [synthetic_record(2, 1, SINK), big, synthetic_record(3, 1, SINK), after_big]
    failed = await send(sns_sink(topic, moto.endpoint_url), records)
    assert list(failed) == [1]
    assert isinstance(failed[1], PermanentError) and "InvalidParameter" in str(failed[1])
    got = {e["egress_id"] for e in envelopes(moto.drain(queue, 3))}
    assert got == {records[0].egress_id, records[2].egress_id, after_big.egress_id}


async def test_deleted_topic_is_permanent(moto: MotoServer) -> None:
    """A topic deleted while the sink runs fails every record permanently (NotFound)."""
    topic = moto.create_topic()
    cls = after_open(lambda: moto.client("sns").delete_topic(TopicArn=topic))
    sink = sns_sink(topic, moto.endpoint_url, cls)
    await sink.open()
    try:
        with pytest.raises(PermanentError, match="NotFound"):
            await sink.write_batch([synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)])
    finally:
        await sink.close()


async def test_connection_refused_is_retryable(moto: MotoServer) -> None:
    """SNS unreachable after start-up: every record of every call fails retryably."""
    topic = moto.create_topic()
    proxy = TcpProxy(int(moto.endpoint_url.rsplit(":", 1)[1]))
    sink = sns_sink(topic, proxy.endpoint_url, after_open(proxy.cut))
    records = [synthetic_record(obj, 1, SINK) for obj in range(25)]  # three calls
    await sink.open()
    try:
        with pytest.raises(PartialBatchError) as info:
            await sink.write_batch(records)
    finally:
        await sink.close()
    assert sorted(info.value.failed) == list(range(25))
    errors = set(info.value.failed.values())
    assert len(errors) == 3  # one error per failed call
    assert all(isinstance(e, RetryableError) and "EndpointConnectionError" in str(e)
               for e in errors)


async def test_read_timeout_is_retryable(moto: MotoServer) -> None:
    """SNS accepting connections but never answering: a retryable read timeout."""
    topic = moto.create_topic()
    proxy = TcpProxy(int(moto.endpoint_url.rsplit(":", 1)[1]))
    sink = sns_sink(topic, proxy.endpoint_url, after_open(proxy.stall), read_timeout=0.5)
    await sink.open()
    started = time.monotonic()
    try:
        with pytest.raises(RetryableError, match="ReadTimeoutError"):
            await sink.write_batch([synthetic_record(1, 1, SINK)])
    finally:
        await sink.close()
        proxy.cut()
    assert time.monotonic() - started < 5  # botocore made one attempt, no retries of its own


async def test_missing_topic_fails_at_open(moto: MotoServer) -> None:
    """A topic that does not exist fails open() naming the key and the ARN."""
    arn = f"arn:aws:sns:{REGION}:123456789012:nope"
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.topic_arn: topic {arn} does not"):
        await sns_sink(arn, moto.endpoint_url).open()


async def test_unreachable_endpoint_fails_at_open() -> None:
    """An endpoint nothing listens on fails open() naming endpoint_url."""
    url = f"http://127.0.0.1:{free_port()}"
    sink = sns_sink(f"arn:aws:sns:{REGION}:123456789012:t", url, connect_timeout=1)
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.endpoint_url: cannot reach"):
        await sink.open()
    await sink.close()


async def test_missing_profile_fails_at_open() -> None:
    """A profile the AWS config does not know fails open() naming the key."""
    settings = SnsSettings(topic_arn=f"arn:aws:sns:{REGION}:123456789012:t",
                           profile="nbstream-test-no-such-profile")
    sink = SnsSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.profile"):
        await sink.open()


@pytest.mark.parametrize(("fields", "message"), [
    ({"topic_arn": "my-topic"}, "not an SNS topic ARN"),
    ({"topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"}, "not an SNS topic ARN"),
    ({"access_key_id": "AKIA"}, "must be set together"),
    ({"session_token": "t"}, "requires access_key_id"),
    ({"profile": "p", "access_key_id": "a", "secret_access_key": "s"}, "either profile"),
    ({"max_concurrency": 0}, "greater than or equal to 1"),
])
def test_settings_validation(fields: dict[str, Any], message: str) -> None:
    """Bad settings fail when the config is loaded."""
    with pytest.raises(ValueError, match=message):
        SnsSettings.model_validate({"topic_arn": "arn:aws:sns:eu-west-1:123456789012:t",
                                    **fields})


def test_region_defaults_to_the_topic_arn() -> None:
    """The client talks to the topic's region unless region says otherwise; FIFO by suffix."""
    s = SnsSettings(topic_arn="arn:aws:sns:eu-west-1:123456789012:t.fifo")
    assert (s.client_region, s.fifo) == ("eu-west-1", True)
    s = SnsSettings(topic_arn="arn:aws-cn:sns:cn-north-1:123456789012:t", region="cn-north-1")
    assert (s.client_region, s.fifo) == ("cn-north-1", False)


def test_secrets_are_not_in_repr() -> None:
    """Credentials never appear in the settings' or the sink's repr."""
    sink = sns_sink("arn:aws:sns:us-east-1:123456789012:t", "http://127.0.0.1:1",
                    session_token="token-value-xyz")
    for text in (repr(sink), repr(sink.settings), str(sink.settings)):
        assert SECRET_KEY not in text and ACCESS_KEY not in text and "token-value" not in text


# -- batching plan --------------------------------------------------------------------------


def test_plan_distinct_keys_is_one_round_of_full_calls() -> None:
    """500 records of 500 objects: one round of 50 calls of 10."""
    rounds = plan_rounds([f"k{i}" for i in range(500)], [1000] * 500)
    assert len(rounds) == 1 and len(rounds[0]) == 50
    assert all(len(c.indices) == MAX_ENTRIES for c in rounds[0])
    assert sorted(i for c in rounds[0] for i in c.indices) == list(range(500))


def test_plan_keeps_each_objects_runs_in_successive_rounds() -> None:
    """A busy object's records go in runs of 10, one run per round, in batch order."""
    keys = ["hot"] * 25 + [f"k{i}" for i in range(15)]
    rounds = plan_rounds(keys, [100] * len(keys))
    assert len(rounds) == 3
    hot = [[i for c in r for i in c.indices if keys[i] == "hot"] for r in rounds]
    assert hot == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert sum(len(c.indices) for c in rounds[0]) == 25
    assert all(len(c.indices) <= MAX_ENTRIES for r in rounds for c in r)


def test_plan_respects_the_size_limit_and_isolates_oversized_entries() -> None:
    """Calls stay within the byte limit; an entry over it travels alone."""
    sizes = [100_000, 100_000, 100_000, 300_000, 10]
    rounds = plan_rounds(["a", "b", "c", "d", "e"], sizes, limit=262_144)
    (calls,) = rounds
    assert all(c.size <= 262_144 or len(c.indices) == 1 for c in calls)
    assert [3] in [c.indices for c in calls]
    assert sorted(i for c in calls for i in c.indices) == [0, 1, 2, 3, 4]


# -- per-entry results, with botocore's Stubber on a real client ---------------------------


class StubbedSns(SnsSink):
    """An SNS sink whose real client answers from botocore's Stubber, not the network."""

    responses: Callable[[Stubber], None] = staticmethod(lambda _stubber: None)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[list[str]] = []  # the entry ids of each PublishBatch call

    def _make_client(self) -> Any:
        client = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION,
        ).client("sns")
        client.meta.events.register("provide-client-params.sns.PublishBatch", self._count)
        stubber = Stubber(client)
        type(self).responses(stubber)
        stubber.activate()
        return client

    def _count(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append([e["Id"] for e in params["PublishBatchRequestEntries"]])


def stubbed(responses: Callable[[Stubber], None],
            topic_attributes: dict[str, str] | None = None) -> StubbedSns:
    """Return an SNS sink whose open() finds a topic with ``topic_attributes`` and whose
    PublishBatch calls get ``responses`` in order."""

    def queue(stubber: Stubber) -> None:
        stubber.add_response("get_topic_attributes", {"Attributes": topic_attributes or {}})
        responses(stubber)

    cls = type("Stubbed", (StubbedSns,), {"responses": staticmethod(queue)})
    sink = sns_sink("arn:aws:sns:us-east-1:123456789012:t", "http://127.0.0.1:1", cls)
    assert isinstance(sink, StubbedSns)
    return sink


def batch_answer(ok: list[int], failed: list[tuple[int, str, bool]]) -> dict[str, Any]:
    """Return a PublishBatch response with ``ok`` ids successful and ``failed`` entries."""
    return {
        "Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in ok],
        "Failed": [{"Id": str(i), "Code": code, "SenderFault": sender, "Message": code}
                   for i, code, sender in failed],
    }


async def test_retryable_entry_holds_back_its_object_with_the_same_error() -> None:
    """A retryable Failed entry: its object's later records (even those SNS took in the same
    call) are reported with the same error instance; other objects are delivered."""
    a1, b1, a2, a3 = (synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK),
                      synthetic_record(1, 2, SINK), synthetic_record(1, 3, SINK))
    sink = stubbed(lambda s: s.add_response(
        "publish_batch", batch_answer([0, 1, 3], [(2, "InternalError", False)])))
    failed = await send(sink, [a1, b1, a2, a3])
    assert sorted(failed) == [2, 3]
    assert isinstance(failed[2], RetryableError) and failed[3] is failed[2]
    assert sink.calls == [["0", "2", "3", "1"]]  # one call, each object's run in order


async def test_retryable_entry_stops_later_rounds_of_its_object() -> None:
    """After a throttled entry, the object's next round is not sent at all."""
    records = [synthetic_record(1, seq, SINK) for seq in range(1, 13)]
    sink = stubbed(lambda s: s.add_response(
        "publish_batch", batch_answer(list(range(9)), [(9, "Throttling", True)])))
    failed = await send(sink, records)
    assert sorted(failed) == [9, 10, 11]
    assert isinstance(failed[9], RetryableError)
    assert failed[10] is failed[9] and failed[11] is failed[9]
    assert len(sink.calls) == 1


async def test_sender_fault_entry_is_permanent_and_holds_nothing_back() -> None:
    """A SenderFault entry is permanent; its object's later records still go out."""
    records = [synthetic_record(1, seq, SINK) for seq in range(1, 4)]
    sink = stubbed(lambda s: s.add_response(
        "publish_batch", batch_answer([1, 2], [(0, "InvalidParameter", True)])))
    failed = await send(sink, records)
    assert list(failed) == [0] and isinstance(failed[0], PermanentError)


async def test_entry_without_result_is_retryable() -> None:
    """An entry SNS reports neither way is not assumed delivered."""
    sink = stubbed(lambda s: s.add_response("publish_batch", batch_answer([0], [])))
    failed = await send(sink, [synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)])
    assert list(failed) == [1] and isinstance(failed[1], RetryableError)


@pytest.mark.parametrize(("code", "status", "error"), [
    ("Throttling", 400, RetryableError),
    ("InternalError", 500, RetryableError),
    ("AuthorizationError", 403, PermanentError),
    ("InvalidParameter", 400, PermanentError),
])
async def test_whole_call_errors(code: str, status: int, error: type[Exception]) -> None:
    """An error answer to the whole call fails every record of it with one error."""
    sink = stubbed(lambda s: s.add_client_error(
        "publish_batch", service_error_code=code, service_message="no", http_status_code=status))
    await sink.open()
    try:
        with pytest.raises(error, match=code):
            await sink.write_batch([synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)])
    finally:
        await sink.close()


@pytest.mark.parametrize(("code", "status", "match"), [
    ("AuthorizationError", 403, r"sinks\.events: AWS refused the credentials .* \(Author"),
    ("InvalidClientTokenId", 403, r"refused the credentials .*InvalidClientTokenId"),
    ("NotFound", 404, r"sinks\.events\.topic_arn: topic .* does not exist"),
    ("InvalidParameter", 400, r"sinks\.events\.topic_arn: .* rejected: InvalidParameter"),
])
async def test_open_errors_are_config_errors(code: str, status: int, match: str) -> None:
    """GetTopicAttributes refusals at start-up become SinkConfigError naming the key."""

    def refuse(stubber: Stubber) -> None:
        stubber.add_client_error("get_topic_attributes", service_error_code=code,
                                 service_message="secret-ish detail", http_status_code=status)

    cls = type("Refused", (StubbedSns,), {"responses": staticmethod(refuse)})
    sink = sns_sink("arn:aws:sns:us-east-1:123456789012:t", "http://127.0.0.1:1", cls)
    with pytest.raises(SinkConfigError, match=match) as info:
        await sink.open()
    if code != "InvalidParameter":
        assert "secret-ish" not in str(info.value)
    await sink.close()


async def test_no_credentials_fails_at_open(moto: MotoServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere in the standard chain fails open() with a clear message."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = SnsSettings(topic_arn=moto.create_topic(), endpoint_url=moto.endpoint_url)
    sink = SnsSink(SINK, settings, SinkContext(environment="test", sink=SINK))
    with pytest.raises(SinkConfigError, match=r"no usable AWS credentials"):
        await sink.open()


async def test_topic_maximum_message_size_sizes_the_calls() -> None:
    """A topic allowing 1 MiB messages takes three 300 KB entries in one call, not three."""
    records = [oversized(obj) for obj in range(1, 4)]
    sink = stubbed(lambda s: s.add_response("publish_batch", batch_answer([0, 1, 2], [])),
                   {"MaximumMessageSize": "1048576"})
    assert await send(sink, records) == {}
    assert sink.calls == [["0", "1", "2"]]


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    """Return a botocore ClientError as an AWS error response would raise it."""
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "PublishBatch")


@pytest.mark.parametrize(("code", "status", "error"), [
    ("Throttling", 400, RetryableError),
    ("ThrottlingException", 400, RetryableError),
    ("KMSThrottling", 400, RetryableError),
    ("ServiceUnavailable", 503, RetryableError),
    ("InternalError", 500, RetryableError),
    ("RequestTimeout", 408, RetryableError),
    ("SomethingNew", 502, RetryableError),
    ("SomethingNew", 429, RetryableError),
    ("AuthorizationError", 403, PermanentError),
    ("InvalidClientTokenId", 403, PermanentError),
    ("AccessDeniedException", 400, PermanentError),
    ("NotFound", 404, PermanentError),
    ("InvalidParameter", 400, PermanentError),
    ("InvalidParameterValue", 400, PermanentError),
    ("ValidationError", 400, PermanentError),
    ("KMSDisabled", 400, PermanentError),
    ("SomethingNew", 400, PermanentError),
])
def test_client_error_classification(code: str, status: int, error: type[Exception]) -> None:
    """AWS error codes map to the contract by code, and unknown codes by HTTP status."""
    assert type(classify_client_error(client_error(code, status))) is error


def test_credential_errors_do_not_echo_the_message() -> None:
    """A refused-credentials answer is reported by code only."""
    err = classify_client_error(client_error("SignatureDoesNotMatch", 403))
    assert isinstance(err, PermanentError) and "message" not in str(err)


def test_retry_after_header_is_honoured() -> None:
    """A Retry-After header on a throttling answer becomes retry_after."""
    err = classify_client_error(client_error("Throttling", 429, {"retry-after": "3"}))
    assert isinstance(err, RetryableError) and err.retry_after == 3.0


@pytest.mark.parametrize(("code", "sender", "error"), [
    ("InternalError", False, RetryableError),
    ("KMSThrottling", True, RetryableError),
    ("Throttling", True, RetryableError),
    ("InvalidParameter", True, PermanentError),
    ("KMSAccessDenied", True, PermanentError),
    ("Unknown", False, RetryableError),
])
def test_failed_entry_classification(code: str, sender: bool, error: type[Exception]) -> None:
    """Failed entries: throttling retryable, otherwise SenderFault permanent, else retryable."""
    entry: Any = {"Id": "0", "Code": code, "SenderFault": sender, "Message": "m"}
    assert type(classify_failed_entry(entry)) is error


# -- end to end -----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.kafka
def test_captured_webhooks_flow_to_sns(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path, moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Captured NetBox webhooks -> nbstream ingest -> process -> sink (sns) -> moto SNS -> a raw
    SQS queue: every routed event once, as the envelope, with attributes, in per-object order."""
    topic = moto.create_topic("e2e")
    queue = moto.subscribe_queue(topic)
    # Credentials reach the config through ${VAR}, as the README tells users to do.
    monkeypatch.setenv("NBSTREAM_TEST_AWS_KEY", ACCESS_KEY)
    monkeypatch.setenv("NBSTREAM_TEST_AWS_SECRET", SECRET_KEY)
    ingest_port = free_port()
    config = {
        **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
        "sinks": {"aws": {"type": "sns", "topic_arn": topic, "endpoint_url": moto.endpoint_url,
                          "access_key_id": "${NBSTREAM_TEST_AWS_KEY}",
                          "secret_access_key": "${NBSTREAM_TEST_AWS_SECRET}"}},
        "rules": [{"name": "everything", "sinks": ["aws"],
                   "event_types": ["object_created", "object_updated", "object_deleted",
                                   "job_completed"]}],
    }
    ensure_topics(parse_settings(config))
    requests = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    payloads = [json.loads(r["body"]) for r in requests]
    with nbstream_processes(config, tmp_path, ["ingest"], ["process"], ["sink", "aws"],
                            ingest_port=ingest_port) as procs:
        with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
            for req in requests:
                headers = {k: v for k, v in req["headers"]
                           if k in ("Content-Type", "X-Hook-Signature")}
                r = client.post("/webhook", content=req["body"].encode(), headers=headers)
                assert r.status_code == 202, r.text
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(messages) < len(payloads) and time.monotonic() < deadline:
            assert_alive(procs)
            messages += moto.drain(queue, timeout=0.5)
        messages += moto.drain(queue, timeout=1.0)  # a duplicate would show up now
        assert_alive(procs)

    assert len(messages) == len(payloads)
    docs = envelopes(messages)
    assert Counter(d["egress_id"] for d in docs).most_common(1)[0][1] == 1
    canonical = {"created": "object_created", "updated": "object_updated",
                 "deleted": "object_deleted", "job_ended": "job_completed"}
    for m, doc in zip(messages, docs, strict=True):
        assert list(doc) == ENVELOPE_KEYS
        assert doc["egress_id"] == egress_id(doc["source_id"], "aws")
        assert (doc["netbox_id"], doc["egress_environment"]) == ("nb-e2e", "e2e")
        assert doc["source_type"] == canonical[doc["message"]["event"]]
        assert TS_FORMAT.match(doc["egress_timestamp"])
        attrs = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
        data = doc["message"].get("data") or {}
        assert attrs == {
            "source_type": doc["source_type"], "object_type": doc["message"]["object_type"],
            "netbox_id": "nb-e2e", "event": doc["message"]["event"],
            "object_key": f"{doc['message']['object_type']}:{data.get('id', '')}",
            "egress_id": doc["egress_id"],
        }
    assert sorted(json.dumps(d["message"], sort_keys=True) for d in docs) == sorted(
        json.dumps(p, sort_keys=True) for p in payloads)

    def order(items: list[dict[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in items:
            data = p.get("data") or {}
            out.setdefault(f"{p['object_type']}:{data.get('id', '')}", []).append(p["timestamp"])
        return out

    assert order([d["message"] for d in docs]) == order(payloads)
