"""The MQTT sink against real Mosquitto brokers: topics, envelopes, user properties, QoS,
retain, order, credentials, ACL refusals, TLS, a broker lost and back, and end to end."""

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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.identity import egress_id
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
from sinks.mqtt import (
    TOPIC_PLACEHOLDERS,
    MqttSettings,
    MqttSink,
    _PackedProperties,
    ack_error,
    batch_failures,
)
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import assert_alive, e2e_base, nbstream_processes
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.records import fixture_records, synthetic_record
from tests.sinks.servers.mosquitto import (
    Message,
    Mosquitto,
    Subscriber,
    TlsFiles,
    make_tls_files,
)

SINK = "broker"
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ENVELOPE_KEYS = [
    "version", "source_id", "source_timestamp", "source_type", "source_type_docs", "netbox_id",
    "netbox_version", "egress_environment", "egress_id", "egress_timestamp", "egress_version",
    "message",
]
# The secured broker's users and what its ACL lets them do.
USERS = {"writer": "s3cret-pw", "reader": "reader-pw", "limited": "limited-pw"}
ACL = """\
user writer
topic write netbox/nb-test/dcim.device/#
user reader
topic read #
topic readwrite nbstream-test/#
user limited
topic write elsewhere/#
"""


def mqtt_sink(port: int, **fields: Any) -> MqttSink:
    """Return an unopened MQTT sink publishing to the broker on ``port``."""
    settings = MqttSettings.model_validate({"host": "127.0.0.1", "port": port, **fields})
    return MqttSink(SINK, settings, SinkContext(environment="test", sink=SINK))


async def send(sink: Sink[Any], records: list[SinkRecord]) -> dict[int, Exception]:
    """Open ``sink``, write one batch, close it; return the failures by index."""
    await sink.open()
    try:
        await sink.write_batch(records)
    except PartialBatchError as err:
        return dict(err.failed)
    except (RetryableError, PermanentError) as err:
        return dict.fromkeys(range(len(records)), err)
    finally:
        await sink.close()
    return {}


async def synced(sub: Subscriber) -> list[Message]:
    """Return what ``sub`` received up to now (see Subscriber.sync), off the event loop."""
    return await asyncio.to_thread(sub.sync)


def per_key(records: list[SinkRecord]) -> dict[str, list[str]]:
    """Return the egress ids of ``records`` grouped by object key, in order."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.object_key, []).append(r.egress_id)
    return out


# -- brokers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """An anonymous Mosquitto broker for the module."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker with a password file (allow_anonymous false) and an ACL."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-secured"), users=USERS, acl=ACL) as b:
        yield b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker accepting packets of at most 512 bytes (smaller than any envelope)."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-tiny"),
                   options=["max_packet_size 512"]) as b:
        yield b


@pytest.fixture
def sub(broker: Mosquitto) -> Iterator[Subscriber]:
    """A subscriber to ``netbox/#`` on the anonymous broker."""
    with Subscriber(broker.port) as s:
        yield s


# -- conformance ----------------------------------------------------------------------------


class MqttHarness:
    """The conformance harness: the anonymous broker as destination; an ACL that denies the
    topic (PUBACK 0x87) as permanent failure; a v3.1.1 client sending packets over the
    broker's size limit, which the broker answers by dropping the connection, as retryable."""

    sink_name = SINK

    def __init__(self, broker: Mosquitto, secured: Mosquitto, tiny: Mosquitto,
                 subs: list[Subscriber]) -> None:
        self.broker, self.secured, self.tiny, self.subs = broker, secured, tiny, subs

    def make_sink(self) -> Sink[Any]:
        return mqtt_sink(self.broker.port)

    def make_misconfigured_sink(self) -> Sink[Any]:
        return mqtt_sink(self.secured.port, username="writer", password="wrong")

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        if error_class == "permanent":
            return mqtt_sink(self.secured.port, username="limited",
                             password=USERS["limited"])
        return mqtt_sink(self.tiny.port, protocol="3.1.1")

    async def received(self) -> list[str]:
        got: list[str] = []
        for s in self.subs:
            got += [m.egress_id for m in await synced(s)]
        return got


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, broker: Mosquitto, secured: Mosquitto,
                           tiny: Mosquitto) -> None:
    """The MQTT sink passes the checks every sink must pass."""
    subs = [Subscriber(broker.port).start(),
            Subscriber(secured.port, username="reader", password=USERS["reader"]).start(),
            Subscriber(tiny.port).start()]
    try:
        await check(MqttHarness(broker, secured, tiny, subs))
    finally:
        for s in subs:
            s.stop()


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "problem"), [
    ("", "must not be empty"),
    ("netbox/+/{event}", "wildcards"),
    ("netbox/#", "wildcards"),
    ("netbox/{event}/\0", "wildcards"),
    ("$SYS/{event}", "reserved"),
    ("netbox/{model}", "unknown placeholder"),
    ("netbox/{}", "unknown placeholder"),
    ("netbox/{event!r}", "unknown placeholder"),
    ("netbox/{event:>10}", "unknown placeholder"),
    ("netbox/{event.__class__}", "unknown placeholder"),
    ("netbox/{event", "expected '}'"),
])
def test_topic_template_is_validated(topic: str, problem: str) -> None:
    """A template that cannot render a valid topic name is refused at configuration time."""
    with pytest.raises(ValueError, match=re.escape(problem)):
        MqttSettings(host="h", topic=topic)


def test_settings() -> None:
    """Defaults, YAML's numeric protocol, the placeholders, and the field checks."""
    s = MqttSettings.model_validate({"host": "h", "protocol": 5})
    assert (s.port, s.qos, s.retain, s.protocol, s.tls, s.client_id) == (
        1883, 1, False, "5", None, None)
    assert s.topic == "netbox/{netbox_id}/{object_type}/{event}"
    assert MqttSettings.model_validate({"host": "h", "protocol": "3.1.1"}).protocol == "3.1.1"
    assert set(routing_attributes(synthetic_record(1, 1, SINK))) == TOPIC_PLACEHOLDERS
    with pytest.raises(ValueError, match="password requires username"):
        MqttSettings(host="h", password="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key_file requires cert_file"):
        MqttSettings.model_validate({"host": "h", "tls": {"key_file": "k.pem"}})
    with pytest.raises(ValueError):
        MqttSettings.model_validate({"host": "h", "qos": 3})
    with pytest.raises(ValueError):
        MqttSettings.model_validate({"host": "h", "tls": {"verify": False}})


def test_password_stays_secret() -> None:
    """The password is in neither the settings' nor the sink's repr."""
    sink = mqtt_sink(1883, username="u", password="hunter2-secret")
    assert "hunter2-secret" not in repr(sink.settings)
    assert "hunter2-secret" not in repr(sink)


def test_reason_code_classification() -> None:
    """PUBACK/PUBREC codes: < 0x80 delivered; quota, busy, id in use retryable; others
    permanent."""
    for code in (0x00, 0x10):
        assert ack_error(code, "t") is None
    for code in (0x97, 0x89, 0x91):
        assert isinstance(ack_error(code, "t"), RetryableError), hex(code)
    for code in (0x80, 0x83, 0x87, 0x90, 0x95, 0x99):
        assert isinstance(ack_error(code, "t"), PermanentError), hex(code)
    assert "Quota exceeded (0x97)" in str(ack_error(0x97, "netbox/x"))


def test_packed_properties_match_paho() -> None:
    """The sink's pre-encoded publish properties are the bytes paho's own encoder produces."""
    attrs = routing_attributes(synthetic_record(1, 1, SINK))
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    props.UserProperty = list(attrs.items())
    assert _PackedProperties(attrs).pack() == props.pack()  # type: ignore[no-untyped-call]


def test_held_back_records_share_the_error() -> None:
    """After a retryable failure, later records of that object carry the same error instance,
    even ones that were delivered; other objects and permanent failures are untouched."""
    a1, b1, a2, b2, a3 = (synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK),
                          synthetic_record(1, 2, SINK), synthetic_record(2, 2, SINK),
                          synthetic_record(1, 3, SINK))
    busy, bad = RetryableError("quota"), PermanentError("denied")
    got = batch_failures([a1, b1, a2, b2, a3], {1: bad, 2: busy})
    assert got == {1: bad, 2: busy, 4: busy}
    assert got[4] is got[2]


# -- delivery -------------------------------------------------------------------------------


async def test_envelope_topic_and_properties(sub: Subscriber) -> None:
    """Each captured NetBox event arrives on its rendered topic as the DESIGN §6 envelope,
    with the routing attributes as MQTT 5 user properties and JSON content type."""
    records = fixture_records(SINK)
    before = datetime.now(UTC)
    assert await send(mqtt_sink(sub.port), records) == {}
    after = datetime.now(UTC)
    got = await synced(sub)
    assert [m.egress_id for m in got] == [r.egress_id for r in records]
    for rec, msg in zip(records, got, strict=True):
        attrs = routing_attributes(rec)
        assert msg.topic == f"netbox/nb-test/{rec.object_type}/{attrs['event']}"
        doc = msg.json()
        assert list(doc) == ENVELOPE_KEYS
        assert doc["message"] == json.loads(rec.message)
        assert doc["source_id"] == rec.source_id and doc["source_type"] == rec.source_type.value
        assert TS_FORMAT.match(doc["egress_timestamp"])
        stamped = datetime.fromisoformat(doc["egress_timestamp"])
        assert before <= stamped <= after
        assert dict(msg.user_properties) == attrs
        assert (msg.content_type, msg.payload_format) == ("application/json", 1)
        assert (msg.qos, msg.retain) == (1, False)


async def test_order_per_object_across_topics(sub: Subscriber) -> None:
    """1,000 interleaved records of 25 objects (a batch far over the broker's Receive Maximum
    of 20), then the captured events, whose objects move between the created, updated and
    deleted topics: every record once, each object's in batch order."""
    records = [synthetic_record(obj, seq, SINK) for seq in range(1, 41) for obj in range(1, 26)]
    fixtures = fixture_records(SINK)
    assert await send(mqtt_sink(sub.port, max_inflight=500), records) == {}
    assert await send(mqtt_sink(sub.port), fixtures) == {}
    got = await synced(sub)
    sent = {r.egress_id: r for r in records + fixtures}
    assert sorted(m.egress_id for m in got) == sorted(sent)
    assert per_key([sent[m.egress_id] for m in got]) == per_key(records + fixtures)
    topics_of: dict[str, set[str]] = {}
    for m in got:
        topics_of.setdefault(sent[m.egress_id].object_key, set()).add(m.topic)
    assert max(len(t) for t in topics_of.values()) == 3  # created, updated, deleted


async def test_two_workers_of_one_sink_keep_their_connections(
    broker: Mosquitto, sub: Subscriber
) -> None:
    """The default client id is unique per connection: a second worker of the same sink does
    not take over the first one's session, which would disconnect it."""
    first, second = mqtt_sink(broker.port), mqtt_sink(broker.port)
    await first.open()
    await second.open()
    try:
        for seq in (1, 2):
            await first.write_batch([synthetic_record(1, seq, SINK)])
            await second.write_batch([synthetic_record(2, seq, SINK)])
    finally:
        await first.close()
        await second.close()
    assert len(await synced(sub)) == 4
    assert "already connected, closing old connection" not in broker.log(tail=None)


@pytest.mark.parametrize("qos", [0, 2])
async def test_qos_levels(broker: Mosquitto, qos: int) -> None:
    """QoS 0 and 2 deliver every record at that QoS."""
    records = [synthetic_record(obj, 1, SINK) for obj in range(1, 51)]
    with Subscriber(broker.port, qos=2) as sub:
        assert await send(mqtt_sink(broker.port, qos=qos), records) == {}
        got = await asyncio.to_thread(sub.wait_for, len(records))
    assert [m.egress_id for m in got] == [r.egress_id for r in records]
    assert {m.qos for m in got} == {qos}


async def test_mqtt_311(sub: Subscriber) -> None:
    """MQTT 3.1.1 delivers the same topics and bodies, without properties."""
    records = [synthetic_record(obj, 1, SINK) for obj in range(1, 4)]
    assert await send(mqtt_sink(sub.port, protocol="3.1.1"), records) == {}
    got = await synced(sub)
    assert [m.egress_id for m in got] == [r.egress_id for r in records]
    assert all(m.topic == "netbox/nb-test/dcim.device/updated" for m in got)
    assert all(m.user_properties == () and m.content_type is None for m in got)


async def test_retain_keeps_the_last_message_per_topic(broker: Mosquitto) -> None:
    """With retain, a subscriber arriving later gets each object's latest message."""
    records = [synthetic_record(obj, seq, SINK) for seq in (1, 2, 3) for obj in (1, 2)]
    template = "retained/{netbox_id}/{object_key}"
    assert await send(mqtt_sink(broker.port, retain=True, topic=template), records) == {}
    with Subscriber(broker.port, filters=["retained/#"]) as late:
        got = await asyncio.to_thread(late.wait_for, 2)
        time.sleep(0.2)  # a third (an older retained message) would have arrived by now
        got = late.messages()
    assert sorted(m.egress_id for m in got) == sorted(r.egress_id for r in records[-2:])
    assert all(m.retain for m in got)
    assert {m.topic for m in got} == {"retained/nb-test/dcim.device:1",
                                      "retained/nb-test/dcim.device:2"}


async def test_invalid_topic_is_permanent_for_that_record(sub: Subscriber) -> None:
    """A topic whose attribute renders a wildcard or NUL fails that record only."""
    good = synthetic_record(1, 1, SINK)
    plus = synthetic_record(2, 1, SINK, object_type="dcim.dev+ice")
    hash_ = synthetic_record(3, 1, SINK, object_type="dcim.dev#ice")
    nul = synthetic_record(4, 1, SINK, object_type="dcim.dev\0ice")
    later = synthetic_record(2, 2, SINK)
    failed = await send(mqtt_sink(sub.port), [good, plus, hash_, nul, later])
    assert sorted(failed) == [1, 2, 3]
    assert all(isinstance(e, PermanentError) and "'+', '#' or NUL" in str(e)
               for e in failed.values())
    assert [m.egress_id for m in await synced(sub)] == [good.egress_id, later.egress_id]


# -- the broker says no -----------------------------------------------------------------------


async def test_password_file(secured: Mosquitto) -> None:
    """The right password delivers; a wrong one, an unknown user or none fails at open(),
    naming the sink and the broker but never the password."""
    rec = synthetic_record(1, 1, SINK)
    with Subscriber(secured.port, username="reader", password=USERS["reader"]) as reader:
        assert await send(mqtt_sink(secured.port, username="writer",
                                    password=USERS["writer"]), [rec]) == {}
        assert [m.egress_id for m in await synced(reader)] == [rec.egress_id]
    for fields in ({"username": "writer", "password": "wrong-pw"},
                   {"username": "writer", "password": "wrong-pw", "protocol": "3.1.1"},
                   {"username": "nobody", "password": "x"},
                   {}):
        sink = mqtt_sink(secured.port, **fields)
        with pytest.raises(SinkConfigError) as info:
            await sink.open()
        await sink.close()
        message = str(info.value)
        assert f"sinks.{SINK}:" in message and f"127.0.0.1:{secured.port}" in message
        assert "Not authorized (0x87)" in message, message
        assert "wrong-pw" not in message


@pytest.mark.parametrize("qos", [1, 2])
async def test_acl_denial_is_permanent_per_record(secured: Mosquitto, qos: int) -> None:
    """Records on topics the ACL denies fail permanently (PUBACK, or for QoS 2 PUBREC, 0x87
    Not authorized); the others are delivered."""
    device = [synthetic_record(1, 1, SINK), synthetic_record(1, 2, SINK)]
    site = [synthetic_record(2, 1, SINK, "dcim.site"), synthetic_record(3, 1, SINK, "dcim.site")]
    batch = [device[0], site[0], device[1], site[1]]
    with Subscriber(secured.port, username="reader", password=USERS["reader"]) as reader:
        failed = await send(mqtt_sink(secured.port, username="writer",
                                      password=USERS["writer"], qos=qos), batch)
        got = await synced(reader)
    assert sorted(failed) == [1, 3]
    assert all(isinstance(e, PermanentError) and "Not authorized (0x87)" in str(e)
               for e in failed.values())
    assert [m.egress_id for m in got] == [r.egress_id for r in device]


async def test_packet_over_the_brokers_maximum_is_permanent(tiny: Mosquitto) -> None:
    """MQTT 5: a message over the broker's Maximum Packet Size fails permanently, unsent."""
    failed = await send(mqtt_sink(tiny.port), [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], PermanentError) and "at most 512" in str(failed[0])


async def test_unreachable_broker_fails_open_fast() -> None:
    """No broker at the address: open() raises SinkConfigError naming sink and address."""
    port = free_port()
    sink = mqtt_sink(port, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}: cannot connect to MQTT broker "
                                              rf"127\.0\.0\.1:{port}"):
        await sink.open()
    assert time.monotonic() - started < 3
    await sink.close()
    with pytest.raises(RetryableError, match="not open"):
        await sink.write_batch([synthetic_record(1, 1, SINK)])


# -- the broker goes away -----------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker this test may kill, pause and restart."""
    b = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield b
    finally:
        b.stop()


async def test_broker_killed_then_back(own_broker: Mosquitto) -> None:
    """Broker gone: the next batch is retryable; broker back on its port: delivery resumes."""
    sink = mqtt_sink(own_broker.port)
    await sink.open()
    try:
        await sink.write_batch([synthetic_record(1, 1, SINK)])
        own_broker.kill()
        with pytest.raises(RetryableError):
            await sink.write_batch([synthetic_record(1, 2, SINK)])
        with pytest.raises(RetryableError, match="cannot connect"):
            await sink.write_batch([synthetic_record(1, 2, SINK)])
        own_broker.start()
        with Subscriber(own_broker.port) as later:
            batch = [synthetic_record(1, 2, SINK), synthetic_record(1, 3, SINK)]
            await sink.write_batch(batch)
            assert [m.egress_id for m in await synced(later)] == [r.egress_id for r in batch]
    finally:
        await sink.close()


async def test_broker_lost_mid_batch(own_broker: Mosquitto) -> None:
    """Unacknowledged records are retryable: after a silence of ack_timeout, and when the
    connection drops while the batch waits; the next batch reconnects and delivers."""
    batch = [synthetic_record(obj, seq, SINK) for seq in (1, 2) for obj in (1, 2, 3)]
    impatient = mqtt_sink(own_broker.port, ack_timeout=0.5)
    await impatient.open()
    own_broker.pause()
    try:
        with pytest.raises(RetryableError, match="no acknowledgement .* within 0.5s"):
            await impatient.write_batch(batch)
    finally:
        own_broker.resume()
        await impatient.close()

    sink = mqtt_sink(own_broker.port)
    await sink.open()
    try:
        own_broker.pause()
        task = asyncio.ensure_future(sink.write_batch(batch))
        await asyncio.sleep(0.3)
        own_broker.kill()
        with pytest.raises(RetryableError, match="connection lost") as info:
            await asyncio.wait_for(task, 10)
        assert not isinstance(info.value, PartialBatchError)
        own_broker.start()
        with Subscriber(own_broker.port) as later:
            await sink.write_batch(batch)
            assert [m.egress_id for m in await synced(later)] == [r.egress_id for r in batch]
    finally:
        await sink.close()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A server certificate for ``broker.invalid`` (not 127.0.0.1) and a client certificate."""
    return make_tls_files(tmp_path_factory.mktemp("tls"), "DNS:broker.invalid")


async def test_tls_with_client_certificate(tmp_path: Path, tls_files: TlsFiles) -> None:
    """TLS: the broker's certificate is verified against ca_file (its host name too, unless
    insecure); a client certificate is presented; failures are SinkConfigErrors at open()."""
    with Mosquitto(tmp_path / "mosquitto-tls", tls=tls_files) as tls_broker:
        full = {"ca_file": str(tls_files.server_cert), "cert_file": str(tls_files.client_cert),
                "key_file": str(tls_files.client_key)}
        rec = synthetic_record(1, 1, SINK)
        assert await send(mqtt_sink(tls_broker.port, tls={**full, "insecure": True}),
                          [rec]) == {}
        for tls, problem in (
            (full, "not valid for '127.0.0.1'"),  # the certificate names broker.invalid
            ({"insecure": True}, "certificate verify failed"),  # not signed by a system CA
            ({"ca_file": str(tls_files.server_cert), "insecure": True},  # no client certificate
             "ended the connection before accepting it"),
        ):
            sink = mqtt_sink(tls_broker.port, tls=tls)
            with pytest.raises(SinkConfigError, match=re.escape(problem)):
                await sink.open()
            await sink.close()
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.tls\.ca_file"):
        await mqtt_sink(1, tls={"ca_file": str(tmp_path / "missing.pem")}).open()


# -- end to end -----------------------------------------------------------------------------


def object_key(payload: dict[str, Any]) -> str:
    """Return the object key nbstream derives for a NetBox payload."""
    data = payload.get("data") or {}
    return f"{payload['object_type']}:{data.get('id', '') if isinstance(data, dict) else ''}"


@pytest.mark.kafka
@pytest.mark.e2e
def test_captured_webhooks_flow_to_mqtt(broker: Mosquitto, kafka_broker: LocalBroker,
                                        topic_prefix: str, tmp_path: Path) -> None:
    """Captured NetBox webhooks -> nbstream ingest -> process -> sink -> Mosquitto: each event
    once, as the envelope on its rendered topic with user properties, in per-object order."""
    requests = [json.loads(line) for line in FIXTURES.read_text().splitlines()]
    payloads = [json.loads(r["body"]) for r in requests]
    ingest_port = free_port()
    config = {
        **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
        "sinks": {"mqtt-out": {"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                               "topic": "netbox/{netbox_id}/{object_type}/{event}"}},
        "rules": [{"name": "everything", "sinks": ["mqtt-out"],
                   "event_types": ["object_created", "object_updated", "object_deleted",
                                   "job_completed"]}],
    }
    ensure_topics(parse_settings(config, env={}))
    with Subscriber(broker.port) as sub, nbstream_processes(
            config, tmp_path, ["ingest"], ["process"], ["sink", "mqtt-out"],
            ingest_port=ingest_port) as procs:
        with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
            for req in requests:
                headers = {k: v for k, v in req["headers"]
                           if k in ("Content-Type", "X-Hook-Signature")}
                r = client.post("/webhook", content=req["body"].encode(), headers=headers)
                assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(sub.messages()) < len(payloads):
            assert_alive(procs)
            time.sleep(0.1)
        time.sleep(1.0)  # anything extra (a duplicate) would arrive now
        got = sub.messages()
        assert_alive(procs)

    # each routed event exactly once, its payload unchanged
    assert len(got) == len(payloads)
    envelopes = [m.json() for m in got]
    assert len({e["egress_id"] for e in envelopes}) == len(got)
    assert sorted(json.dumps(e["message"], sort_keys=True) for e in envelopes) == sorted(
        json.dumps(p, sort_keys=True) for p in payloads)
    for msg, env in zip(got, envelopes, strict=True):
        original = env["message"]
        assert list(env) == ENVELOPE_KEYS
        assert env["egress_id"] == egress_id(env["source_id"], "mqtt-out")
        assert (env["netbox_id"], env["egress_environment"]) == ("nb-e2e", "e2e")
        # the templated topic and the MQTT 5 user properties
        assert msg.topic == f"netbox/nb-e2e/{original['object_type']}/{original['event']}"
        assert dict(msg.user_properties) == {
            "source_type": env["source_type"], "object_type": original["object_type"],
            "netbox_id": "nb-e2e", "event": original["event"],
            "object_key": object_key(original), "egress_id": env["egress_id"]}
        assert (msg.content_type, msg.payload_format, msg.qos) == ("application/json", 1, 1)

    # per-object order: each object's events arrive in the order NetBox sent them
    def timestamps(items: list[dict[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in items:
            out.setdefault(object_key(p), []).append(p["timestamp"])
        return out

    assert timestamps([e["message"] for e in envelopes]) == timestamps(payloads)
