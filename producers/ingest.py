"""The webhook ingest ASGI app: NetBox webhooks in, acknowledged records on the raw topic out.

``POST /webhook`` answers 202 only after the broker stored the record (DESIGN §8, §9); every
other outcome is a JSON ``{"error", "detail"}`` with the status NetBox needs to mark the
delivery failed (and requeue it on 503). ``GET /healthz``, ``/readyz`` and ``/metrics`` serve
the orchestrator and Prometheus. Scale by processes:
``uvicorn --factory producers.ingest:app_factory --workers N``.

``/webhook`` is served as plain ASGI, in front of Starlette: Starlette's middleware, routing,
request and response objects cost about a fifth of ingest's CPU per request
(docs/performance.md). Starlette keeps the lifespan and the other routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from producers.kafka_producer import (
    EventProducer,
    KafkaProducer,
    ProduceError,
    RecordTooLargeError,
)
from producers.metrics import CONTENT_TYPE_LATEST, IngestMetrics
from producers.normalize import NotANetBoxEvent, compact_json, normalize
from producers.signature import SignatureVerifier
from schemas.config import Settings, load_settings
from schemas.serde import AutoSerde, SerdeError, make_serde
from schemas.topics import Topics

__all__ = ["CONFIG_ENV", "RETRY_AFTER_SECONDS", "IngestApp", "app_factory", "create_app"]

log = logging.getLogger(__name__)

CONFIG_ENV = "NBSTREAM_CONFIG"
RETRY_AFTER_SECONDS = 5
SOURCE_ID_HEADER = "nbstream-source-id"

# Status, body, and headers besides Content-Type and Content-Length.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

_JSON_TYPE = (b"content-type", b"application/json")


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """Refuse numbers beyond a double's range, which would parse as infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# The standard library parses: orjson turns integers beyond 64 bits into floats, and the
# record must keep NetBox's values exactly.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _answer(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
            ) -> Answer:
    """Return a JSON answer."""
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
             ] if headers else []
    return status, compact_json(body), extra


def _error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
           ) -> Answer:
    """Return the JSON error answer every non-2xx status carries."""
    return _answer(status, {"error": code, "detail": detail}, headers)


def _response(answer: Answer) -> Response:
    """Return ``answer`` as a Starlette response, for the routes Starlette serves."""
    status, body, headers = answer
    response = Response(body, status, media_type="application/json")
    response.raw_headers.extend(headers)
    return response


async def _send(send: Send, answer: Answer) -> None:
    """Send ``answer`` as the complete HTTP response."""
    status, body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": [
        _JSON_TYPE, (b"content-length", str(len(body)).encode("ascii")), *headers]})
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str | None) -> bool:
    """Return whether a Content-Type is application/json in UTF-8 (the JSON default)."""
    if content_type is None:
        return False
    if content_type == "application/json":
        return True
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8", "utf8"
        ):
            return False
    return True


def _client(scope: Scope) -> str | None:
    """Return the client's address, for logs."""
    client = scope.get("client")
    return client[0] if client else None


class _ClientGone(Exception):
    """The client disconnected before it sent the whole body."""


# Bodies over the limit end the connection: the client may still be sending the rest.
_CLOSE = {"Connection": "close"}


class _Ingest:
    """The state one ingest app shares across requests, and its endpoints."""

    def __init__(self, settings: Settings, producer: EventProducer | None,
                 metrics: IngestMetrics, serde: AutoSerde) -> None:
        self.settings = settings
        self.netbox = settings.netbox
        self.topic = Topics(settings.kafka.topic_prefix).raw
        self.max_body = settings.ingest.max_body_bytes
        self.verifier = SignatureVerifier(
            s.get_secret_value() for s in settings.netbox.webhook_secrets
        )
        self.producer = producer
        self.metrics = metrics
        self.serde = serde

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one NetBox webhook (plain ASGI) and record the outcome in the metrics."""
        started = time.perf_counter()
        try:
            answer = await self._webhook(scope, receive)
        except Exception:  # noqa: BLE001 - answered and logged, the server keeps serving
            log.exception("webhook failed", extra={"client": _client(scope)})
            answer = _error(500, "internal_error", "internal error")
        await _send(send, answer)
        self.metrics.answered(answer[0], time.perf_counter() - started)

    def _rejected(self, scope: Scope, status: int, code: str, detail: str,
                  headers: Mapping[str, str] | None = None) -> Answer:
        """Log a rejection (never the body, signature or secrets) and return its answer."""
        log.info("webhook rejected", extra={
            "status": status, "error": code, "detail": detail, "client": _client(scope),
        })
        return _error(status, code, detail, headers)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """Return the body, or None as soon as it exceeds max_body_bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _webhook(self, scope: Scope, receive: Receive) -> Answer:
        """Validate, normalise, encode and produce one webhook; return the answer."""
        headers: dict[bytes, bytes] = dict(scope["headers"])  # names are lowercase in ASGI
        raw_type = headers.get(b"content-type")
        content_type = None if raw_type is None else raw_type.decode("latin-1")
        if not _is_json(content_type):
            return self._rejected(scope, 415, "unsupported_media_type",
                                  f"Content-Type must be application/json, got {content_type!r}")
        too_large = f"body exceeds max_body_bytes ({self.max_body})"
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return self._rejected(scope, 413, "payload_too_large", too_large, _CLOSE)
        try:
            body = await self._read_body(receive)
        except _ClientGone:
            return self._rejected(scope, 400, "client_disconnected", "body incomplete")
        if body is None:
            # Counted while streaming, so chunked or lying clients are cut off too.
            return self._rejected(scope, 413, "payload_too_large", too_large, _CLOSE)

        if self.verifier.enabled:
            signature = headers.get(b"x-hook-signature")
            if signature is None:
                return self._rejected(scope, 401, "missing_signature",
                                      "X-Hook-Signature header is required")
            if not self.verifier.verify(body, signature):
                return self._rejected(scope, 401, "bad_signature",
                                      "X-Hook-Signature does not match any configured secret")

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return self._rejected(scope, 400, "malformed_json", f"body is not UTF-8: {err}")
        try:
            payload = _DECODER.decode(text)
        except (ValueError, RecursionError) as err:
            return self._rejected(scope, 400, "malformed_json", f"body is not JSON: {err}")
        if not isinstance(payload, dict):
            return self._rejected(scope, 400, "not_an_object",
                                  f"body is a JSON {type(payload).__name__}, not an object")
        try:
            event = normalize(payload, text, self.netbox, datetime.now(UTC))
        except NotANetBoxEvent as err:
            return self._rejected(scope, 400, "not_a_netbox_event", str(err))

        try:
            value = self.serde.encode("NetBoxEvent", event.to_dict(), self.topic)
        except SerdeError as err:
            # With a registry this is the registry being unreachable: worth a NetBox retry.
            log.warning("cannot encode event", extra={"detail": str(err),
                                                      "source_id": event.source_id})
            return _error(503, "encode_failed", str(err),
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})

        producer = self.producer
        if producer is None:
            return _error(503, "not_started", "the producer is not running",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        produce_started = time.perf_counter()
        try:
            await producer.produce(self.topic, event.object_key.encode("utf-8"), value,
                                   [(SOURCE_ID_HEADER, event.source_id.encode("ascii"))])
        except RecordTooLargeError as err:
            return self._rejected(scope, 413, "record_too_large", str(err))
        except ProduceError as err:
            log.warning("produce failed", extra={
                "source_id": event.source_id, "object_key": event.object_key,
                "kafka_error": err.code, "detail": str(err),
            })
            return _error(503, "broker_unavailable", f"the broker did not store the event: {err}",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.metrics.produce_seconds.observe(time.perf_counter() - produce_started)
        self.metrics.accepted(event.event_type.value)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("webhook accepted", extra={
                "source_id": event.source_id, "object_key": event.object_key,
                "event_type": event.event_type.value,
            })
        return _answer(202, {"source_id": event.source_id, "object_key": event.object_key,
                             "event_type": event.event_type.value})

    async def healthz(self, request: Request) -> Response:
        """Answer 200 while the process serves requests."""
        return _response(_answer(200, {"status": "ok"}))

    async def readyz(self, request: Request) -> Response:
        """Answer 200 when the broker is reachable and the raw topic exists, else 503."""
        if self.producer is not None and await self.producer.ready():
            return _response(_answer(200, {"status": "ready"}))
        return _response(_error(503, "not_ready",
                                f"broker unreachable or topic {self.topic} missing"))

    async def metrics_endpoint(self, request: Request) -> Response:
        """Serve the Prometheus text exposition."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Render routing errors (404, 405) as the JSON error body."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return _response(_error(status, code, detail, headers))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Render an unexpected failure as JSON; Starlette still logs the traceback."""
    return _response(_error(500, "internal_error", "internal error"))


class IngestApp:
    """The ingest ASGI app: ``/webhook`` served directly, everything else by Starlette."""

    def __init__(self, ingest: _Ingest, rest: Starlette) -> None:
        self.ingest = ingest
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "http" and scope["path"] == "/webhook":
            if scope["method"] == "POST":
                await self.ingest.webhook(scope, receive, send)
            else:
                await _send(send, _error(405, "method_not_allowed", "Method Not Allowed",
                                         {"Allow": "POST"}))
            return
        await self._rest(scope, receive, send)


def create_app(
    settings: Settings,
    producer: EventProducer | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> IngestApp:
    """Return the ingest app; without ``producer`` a KafkaProducer is run by the lifespan."""
    metrics = IngestMetrics(registry if registry is not None else CollectorRegistry())
    serde = make_serde(settings.schema_registry.url, settings.schema_registry.client)
    ingest = _Ingest(settings, producer, metrics, serde)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned: KafkaProducer | None = None
        if ingest.producer is None:
            owned = KafkaProducer.from_settings(settings)
            ingest.producer = owned
        if settings.schema_registry.url:
            await _register_schema(serde, ingest.topic)
        log.info("ingest started", extra={"topic": ingest.topic,
                                          "signed": ingest.verifier.enabled})
        try:
            yield
        finally:
            if owned is not None:
                ingest.producer = None
                await asyncio.to_thread(owned.close, settings.ingest.produce_timeout)

    rest = Starlette(
        routes=[
            Route("/healthz", ingest.healthz, methods=["GET"]),
            Route("/readyz", ingest.readyz, methods=["GET"]),
            Route("/metrics", ingest.metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    return IngestApp(ingest, rest)


async def _register_schema(serde: AutoSerde, topic: str) -> None:
    """Register the NetBoxEvent schema before the first request (a blocking registry call)."""
    from schemas.records import EventType, NetBoxEvent

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    probe = NetBoxEvent(
        source_id="00000000-0000-0000-0000-000000000000", source_timestamp=epoch,
        ingest_timestamp=epoch, event_type=EventType.UNKNOWN, netbox_event="", object_type="",
        object_id=None, object_key="", netbox_id="", netbox_version="", message="",
    )
    try:
        await asyncio.to_thread(serde.encode, "NetBoxEvent", probe.to_dict(), topic)
    except SerdeError as err:
        # Not fatal: requests retry the registration and answer 503 while it fails.
        log.warning("schema registration failed; will retry per request",
                    extra={"detail": str(err)})


def app_factory() -> IngestApp:
    """Return the app for ``uvicorn --factory``: settings from $NBSTREAM_CONFIG (nbstream.yaml)."""
    return create_app(load_settings(Path(os.environ.get(CONFIG_ENV, "nbstream.yaml"))))
