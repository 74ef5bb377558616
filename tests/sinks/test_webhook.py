"""The webhook sink against a real local HTTP receiver: bodies, templates, signature, errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

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
from sinks.webhook import WebhookSettings, WebhookSink, netbox_context, parse_retry_after
from tests.conftest import free_port
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.receiver import Received, Receiver, Response
from tests.sinks.records import fixture_records, record_from_payload, synthetic_record

SINK = "hooks"
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ENVELOPE_KEYS = [
    "version", "source_id", "source_timestamp", "source_type", "source_type_docs", "netbox_id",
    "netbox_version", "egress_environment", "egress_id", "egress_timestamp", "egress_version",
    "message",
]


def webhook(url: str, *, environ: dict[str, str] | None = None, **fields: Any) -> WebhookSink:
    """Return an unopened webhook sink posting to ``url``."""
    settings = WebhookSettings.model_validate({"payload_url": url, **fields})
    context = SinkContext(environment="test", sink=SINK, environ=environ or {})
    return WebhookSink(SINK, settings, context)


async def send(sink: WebhookSink, records: list[SinkRecord]) -> dict[int, Exception]:
    """Open ``sink``, write one batch, close it; return the failures by index."""
    await sink.open()
    try:
        await sink.write_batch(records)
    except PartialBatchError as err:
        return dict(err.failed)
    finally:
        await sink.close()
    return {}


def by_status(status: int, **headers: str) -> Any:
    """Return a receiver script answering every request with ``status``."""
    return lambda _req, _n: Response(status, headers=dict(headers))


# -- conformance --------------------------------------------------------------------------


class WebhookHarness:
    """The conformance harness: the receiver as destination, statuses as failures."""

    sink_name = SINK

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        # /status/<code> answers <code>; everything else 200.
        receiver.script = lambda req, _n: Response(
            int(req.path.rsplit("/", 1)[1]) if req.path.startswith("/status/") else 200)

    def make_sink(self) -> Sink[Any]:
        return webhook(self.receiver.url())

    def make_misconfigured_sink(self) -> Sink[Any]:
        return webhook(f"ftp://127.0.0.1:{self.receiver.port}/hook")

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        code = 503 if error_class == "retryable" else 400
        return webhook(self.receiver.url(f"/status/{code}"))

    async def received(self) -> list[str]:
        return [r.egress_id for r in self.receiver.delivered()]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, receiver: Receiver) -> None:
    """The webhook sink passes the checks every sink must pass."""
    await check(WebhookHarness(receiver))


# -- bodies ---------------------------------------------------------------------------------


async def test_envelope_fields_and_types(receiver: Receiver) -> None:
    """Each captured NetBox event arrives as the DESIGN §6 envelope, its payload unchanged."""
    records = fixture_records(SINK)
    before = datetime.now(UTC)
    assert await send(webhook(receiver.url()), records) == {}
    after = datetime.now(UTC)
    got = {r.egress_id: r for r in receiver.delivered()}
    assert len(got) == len(records)
    for rec in records:
        req = got[rec.egress_id]
        doc = req.json()
        assert list(doc) == ENVELOPE_KEYS
        assert doc["version"] == 1
        assert doc["source_id"] == rec.source_id
        assert doc["egress_id"] == egress_id(rec.source_id, SINK) == rec.egress_id
        assert doc["source_type"] == rec.source_type.value
        assert doc["netbox_id"] == "nb-test" and doc["egress_environment"] == "test"
        for ts in ("source_timestamp", "egress_timestamp"):
            assert TS_FORMAT.match(doc[ts]), doc[ts]
        stamped = datetime.fromisoformat(doc["egress_timestamp"])
        assert before <= stamped <= after
        assert doc["message"] == json.loads(rec.message)
        assert rec.message.encode() in req.body  # spliced byte for byte
        assert req.method == "POST"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"].startswith("nbstream/")
        assert req.headers["X-NBStream-Source-Id"] == rec.source_id
        assert req.headers["X-NBStream-Event"] == rec.source_type.value
        assert req.headers["X-NBStream-Object-Type"] == rec.object_type
        assert req.headers["X-NBStream-Object-Key"] == rec.object_key
        assert "X-Hook-Signature" not in req.headers


async def test_netbox_body_is_the_original_payload(receiver: Receiver) -> None:
    """body: netbox sends NetBox's own payload bytes, exactly as NetBox sent them."""
    records = fixture_records(SINK)[:5]
    assert await send(webhook(receiver.url(), body="netbox", http_method="PUT"), records) == {}
    got = {r.egress_id: r for r in receiver.delivered()}
    for rec in records:
        assert got[rec.egress_id].body == rec.message.encode()
        assert got[rec.egress_id].method == "PUT"


async def test_body_template_renders_netbox_context(receiver: Receiver) -> None:
    """A NetBox body template renders with NetBox's webhook context plus egress/source ids."""
    template = ('{"dev": "{{ data.name }}", "ev": "{{ event }}", "type": "{{ object_type }}", '
                '"model": "{{ model }}", "user": "{{ username }}", "req": "{{ request_id }}", '
                '"post": "{{ snapshots.postchange.name }}", "egress": "{{ egress_id }}", '
                '"source": "{{ source_id }}"}')
    device = next(r for r in fixture_records(SINK) if r.object_key == "dcim.device:1")
    payload = json.loads(device.message)
    assert await send(webhook(receiver.url(), body_template=template), [device]) == {}
    (req,) = receiver.delivered()
    assert req.json() == {
        "dev": payload["data"]["name"], "ev": "created", "type": "dcim.device",
        "model": "device", "user": "admin", "req": payload["request_id"],
        "post": payload["snapshots"]["postchange"]["name"], "egress": device.egress_id,
        "source": device.source_id,
    }


def test_context_fills_keys_newer_netbox_releases_dropped() -> None:
    """NetBox 4.7 payloads (no username/request_id/model) still fill the old template keys."""
    body = json.dumps({"event": "updated", "timestamp": "2026-11-22T10:30:00+00:00",
                       "object_type": "dcim.site", "data": {"id": 7},
                       "request": {"id": "r-1", "user": "bob", "method": "PATCH"}})
    ctx = netbox_context(record_from_payload(body, SINK), json.loads(body))
    assert (ctx["username"], ctx["request_id"], ctx["model"]) == ("bob", "r-1", "site")
    assert ctx["snapshots"] is None and ctx["request"]["method"] == "PATCH"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ data.__class__.__mro__[1].__subclasses__() }}",
    "{{ range(10**8) | list }}",
    "{{ missing.attribute }}",
])
async def test_unsafe_or_broken_template_is_permanent(receiver: Receiver, template: str) -> None:
    """The sandbox refuses escapes; any render error is permanent and nothing is sent."""
    rec = synthetic_record(1, 1, SINK)
    failed = await send(webhook(receiver.url(), body_template=template), [rec])
    assert isinstance(failed[0], PermanentError), failed
    assert "template error" in str(failed[0])
    assert receiver.requests == []


# -- URL and headers ------------------------------------------------------------------------


async def test_templated_url_and_headers(receiver: Receiver) -> None:
    """payload_url and additional_headers render per record, as NetBox renders them."""
    sink = webhook(
        receiver.url("/{{ object_type }}/{{ data.id }}") + "?ev={{ event }}",
        additional_headers="X-Device: {{ data.name }}\nX-Static: yes\n\nAuthorization: T a:b",
    )
    records = [synthetic_record(4, 1, SINK), synthetic_record(5, 1, SINK)]
    assert await send(sink, records) == {}
    got = sorted(receiver.delivered(), key=lambda r: r.path)
    assert [(r.path, r.query) for r in got] == [("/dcim.device/4", "ev=updated"),
                                               ("/dcim.device/5", "ev=updated")]
    assert [r.headers["X-Device"] for r in got] == ["dev-4", "dev-5"]
    assert got[0].headers["X-Static"] == "yes"
    assert got[0].headers["Authorization"] == "T a:b"  # split at the first colon only


async def test_header_values_cannot_inject_headers(receiver: Receiver) -> None:
    """CR, LF and control characters in data are stripped, with or without header_safe."""
    body = json.dumps({"event": "created", "timestamp": "2026-11-22T10:30:00+00:00",
                       "object_type": "dcim.device",
                       "data": {"id": 9, "name": "evil\r\nX-Injected: 1\x00\x7f"}})
    rec = record_from_payload(body, SINK)
    sink = webhook(receiver.url(),
                   additional_headers="X-A: {{ data.name | header_safe }}\nX-B: {{ data.name }}")
    assert await send(sink, [rec]) == {}
    (req,) = receiver.delivered()
    assert req.headers["X-A"] == req.headers["X-B"] == "evilX-Injected: 1"
    assert "X-Injected" not in req.headers


async def test_env_filter_reads_only_allowed_names(receiver: Receiver) -> None:
    """The env filter returns allowed variables from the injected mapping, else empty."""
    environ = {"NB_TOKEN": "t0k", "SECRET_KEY": "nope"}
    headers = "Authorization: Bearer {{ 'NB_TOKEN' | env }}\nX-Other: [{{ 'SECRET_KEY' | env }}]"
    rec = synthetic_record(1, 1, SINK)
    allowed = webhook(receiver.url(), environ=environ, additional_headers=headers,
                      env_allow=["NB_*"])
    default = webhook(receiver.url(), environ=environ, additional_headers=headers)
    assert await send(allowed, [rec]) == {}
    assert await send(default, [rec]) == {}
    first, second = receiver.delivered()
    assert (first.headers["Authorization"], first.headers["X-Other"]) == ("Bearer t0k", "[]")
    assert (second.headers["Authorization"], second.headers["X-Other"]) == ("Bearer", "[]")


@pytest.mark.parametrize("fields", [
    {"body": "envelope"}, {"body": "netbox"}, {"body_template": '{"n": "{{ data.name }}"}'},
])
async def test_signature_verified_by_receiver(receiver: Receiver, fields: dict[str, Any]) -> None:
    """X-Hook-Signature is hex HMAC-SHA512 of the exact body bytes, as NetBox computes it."""
    records = [synthetic_record(1, 1, SINK), synthetic_record(2, 1, SINK)]
    assert await send(webhook(receiver.url(), secret="s3cret", **fields), records) == {}
    for req in receiver.delivered():
        expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
        assert hmac.compare_digest(req.headers["X-Hook-Signature"], expected)


# -- errors ---------------------------------------------------------------------------------


async def test_503_is_retryable_with_retry_after_seconds(receiver: Receiver) -> None:
    """503 with Retry-After delta-seconds: retryable, the delay parsed."""
    receiver.script = by_status(503, **{"Retry-After": "7"})
    failed = await send(webhook(receiver.url()), [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], RetryableError) and failed[0].retry_after == 7.0
    assert "HTTP 503" in str(failed[0])


async def test_429_is_retryable_with_retry_after_date(receiver: Receiver) -> None:
    """429 with Retry-After as an HTTP-date: retryable, the delay is the time until then."""
    when = datetime.now(UTC) + timedelta(seconds=30)
    receiver.script = by_status(429, **{"Retry-After": format_datetime(when, usegmt=True)})
    failed = await send(webhook(receiver.url()), [synthetic_record(1, 1, SINK)])
    err = failed[0]
    assert isinstance(err, RetryableError) and err.retry_after is not None
    assert 25 <= err.retry_after <= 31


@pytest.mark.parametrize("status", [408, 500, 502])
async def test_other_retryable_statuses(receiver: Receiver, status: int) -> None:
    """408 and every 5xx are retryable; without Retry-After there is no hint."""
    receiver.script = by_status(status)
    failed = await send(webhook(receiver.url()), [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], RetryableError) and failed[0].retry_after is None


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_other_4xx_are_permanent(receiver: Receiver, status: int) -> None:
    """Any other 4xx is permanent, with the status and the receiver's answer in the message."""
    receiver.script = lambda _r, _n: Response(status, body=b"bad device payload")
    failed = await send(webhook(receiver.url()), [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], PermanentError)
    assert f"HTTP {status}" in str(failed[0]) and "bad device payload" in str(failed[0])


async def test_connection_refused_is_retryable() -> None:
    """Nothing listening: a connection error, retryable."""
    failed = await send(webhook(f"http://127.0.0.1:{free_port()}/hook"),
                        [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], RetryableError)


async def test_timeout_is_retryable(receiver: Receiver) -> None:
    """A receiver slower than ``timeout``: retryable."""
    receiver.script = lambda _r, _n: Response(delay=1.0)
    failed = await send(webhook(receiver.url(), timeout=0.2), [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], RetryableError)


def test_parse_retry_after() -> None:
    """Delta-seconds and HTTP-dates parse; garbage gives no hint; the past gives zero."""
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Sun, 22 Nov 2026 10:01:00 GMT", now) == 60.0
    assert parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- order and concurrency ------------------------------------------------------------------


def _assert_sequential_per_key(requests: list[Received]) -> None:
    """Within one key, each request started after the previous one was answered."""
    for key in {r.key for r in requests}:
        mine = sorted((r for r in requests if r.key == key), key=lambda r: r.started)
        for earlier, later in zip(mine, mine[1:], strict=False):
            assert later.started >= earlier.finished, key


async def test_keys_concurrent_records_of_one_key_sequential(receiver: Receiver) -> None:
    """Different objects are sent concurrently, one object's records one after another."""
    receiver.script = lambda _r, _n: Response(delay=0.05)
    batch = [synthetic_record(obj, seq, SINK) for seq in range(1, 5) for obj in (1, 2, 3, 4)]
    started = time.monotonic()
    assert await send(webhook(receiver.url()), batch) == {}
    elapsed = time.monotonic() - started
    got = receiver.delivered()
    _assert_sequential_per_key(got)
    assert receiver.max_in_flight == 4
    assert elapsed < 16 * 0.05  # well below sending all 16 one by one
    for key in {r.object_key for r in batch}:
        sent = [r.egress_id for r in batch if r.object_key == key]
        assert [r.egress_id for r in sorted(got, key=lambda r: r.started) if r.key == key] == sent


async def test_retryable_failure_stops_its_key_only(receiver: Receiver) -> None:
    """After a retryable failure the key's later records are not attempted and carry the same
    error, so a retry keeps their order; other keys are unaffected."""
    batch = [synthetic_record(obj, seq, SINK) for seq in range(1, 5) for obj in (1, 2)]
    poisoned = batch[2].egress_id  # object 1, second update
    receiver.script = lambda req, _n: Response(503 if req.egress_id == poisoned else 200)
    failed = await send(webhook(receiver.url()), batch)
    obj1_later = [i for i, r in enumerate(batch) if r.object_key == batch[0].object_key][1:]
    assert sorted(failed) == obj1_later
    errors = {id(e) for e in failed.values()}
    assert len(errors) == 1 and isinstance(next(iter(failed.values())), RetryableError)
    attempted = [r.egress_id for r in receiver.requests]
    assert attempted.count(poisoned) == 1
    assert not {batch[i].egress_id for i in obj1_later[1:]} & set(attempted)
    assert {r.egress_id for r in receiver.delivered()} == (
        {r.egress_id for r in batch if r.object_key != batch[0].object_key} | {batch[0].egress_id})


async def test_permanent_failure_does_not_hold_its_key(receiver: Receiver) -> None:
    """A permanently failed record goes to the DLQ anyway, so its key's later records go on."""
    batch = [synthetic_record(1, seq, SINK) for seq in range(1, 5)]
    receiver.script = lambda req, _n: Response(400 if req.egress_id == batch[1].egress_id else 200)
    failed = await send(webhook(receiver.url()), batch)
    assert list(failed) == [1] and isinstance(failed[1], PermanentError)
    assert [r.egress_id for r in receiver.delivered()] == [batch[i].egress_id for i in (0, 2, 3)]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "field"), [
    ("ftp://127.0.0.1/hook", "payload_url"),
    ("ftp://{{ data.host }}/hook", "payload_url"),
    ("127.0.0.1/hook", "payload_url"),
    ("http://{{ data.host ", "payload_url"),
])
async def test_bad_url_fails_at_open(url: str, field: str) -> None:
    """A non-http(s) scheme or a broken URL template fails open(), naming the key."""
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.{field}"):
        await webhook(url).open()


async def test_templated_url_rendering_to_other_scheme_is_permanent(receiver: Receiver) -> None:
    """A URL that renders to a scheme other than http(s) is refused per record, permanently."""
    sink = webhook("{{ 'ftp' }}://127.0.0.1:" + str(receiver.port) + "/hook")
    failed = await send(sink, [synthetic_record(1, 1, SINK)])
    assert isinstance(failed[0], PermanentError) and "ftp" in str(failed[0])
    assert receiver.requests == []


@pytest.mark.parametrize(("fields", "key"), [
    ({"body_template": "{{ unclosed"}, "body_template"),
    ({"additional_headers": "X-A: {% if %}"}, "additional_headers"),
    ({"additional_headers": "no colon here"}, "additional_headers"),
    ({"ca_file_path": "/nonexistent/ca.pem"}, "ca_file_path"),
])
async def test_bad_templates_and_files_fail_at_open(
    receiver: Receiver, fields: dict[str, Any], key: str
) -> None:
    """Templates are compiled and static headers and the CA file checked when the sink opens."""
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.{key}"):
        await webhook(receiver.url(), **fields).open()


def test_settings_reject_ca_file_without_verification() -> None:
    """As NetBox: a CA file makes no sense with TLS verification off."""
    with pytest.raises(ValueError, match="ca_file_path requires ssl_verification"):
        WebhookSettings.model_validate({"payload_url": "https://x", "ssl_verification": False,
                                        "ca_file_path": "ca.pem"})


def test_secret_is_not_in_repr() -> None:
    """The secret never appears in the settings' repr."""
    settings = WebhookSettings.model_validate({"payload_url": "https://x", "secret": "s3cret"})
    assert "s3cret" not in repr(settings)


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, Path]]:
    """A receiver serving HTTPS with a fresh self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    r = await Receiver(tls=context).start()
    try:
        yield r, cert
    finally:
        await r.stop()


async def test_tls_verification_and_ca_file(tls_receiver: tuple[Receiver, Path]) -> None:
    """An unknown certificate is refused (retryably); ca_file_path or ssl_verification: false
    let the request through, as NetBox's fields do."""
    receiver, cert = tls_receiver
    rec = synthetic_record(1, 1, SINK)
    failed = await send(webhook(receiver.url()), [rec])
    assert isinstance(failed[0], RetryableError) and "certificate" in str(failed[0]).lower()
    assert await send(webhook(receiver.url(), ca_file_path=str(cert)), [rec]) == {}
    assert await send(webhook(receiver.url(), ssl_verification=False), [rec]) == {}
    assert len(receiver.delivered()) == 2
