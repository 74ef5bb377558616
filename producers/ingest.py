"""The webhook ingest ASGI app: NetBox webhooks in, acknowledged records on the raw topic out.

``POST /webhook`` answers 202 only after the broker stored the record (DESIGN §8, §9); every
other outcome is a JSON ``{"error", "detail"}`` with the status NetBox needs to mark the
delivery failed (and requeue it on 503). ``GET /healthz``, ``/readyz`` and ``/metrics`` serve
the orchestrator and Prometheus. Scale by processes:
``uvicorn --factory producers.ingest:app_factory --workers N``.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from producers.kafka_producer import (
    EventProducer,
    KafkaProducer,
    ProduceError,
    RecordTooLargeError,
)
from producers.metrics import CONTENT_TYPE_LATEST, IngestMetrics
from producers.normalize import NotANetBoxEvent, normalize
from producers.signature import SignatureVerifier
from schemas.config import Settings, load_settings
from schemas.serde import AutoSerde, SerdeError, make_serde
from schemas.topics import Topics

__all__ = ["CONFIG_ENV", "RETRY_AFTER_SECONDS", "app_factory", "create_app"]

log = logging.getLogger(__name__)

CONFIG_ENV = "NBSTREAM_CONFIG"
RETRY_AFTER_SECONDS = 5
SOURCE_ID_HEADER = "nbstream-source-id"

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not."""
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
          ) -> Response:
    """Return a compact JSON response."""
    return Response(_ENCODER.encode(body).encode("utf-8"), status, headers,
                    media_type="application/json")


def _error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
           ) -> Response:
    """Return the JSON error body every non-2xx answer carries."""
    return _json(status, {"error": code, "detail": detail}, headers)


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

    async def webhook(self, request: Request) -> Response:
        """Answer one NetBox webhook and record the outcome in the metrics."""
        started = time.perf_counter()
        response = await self._webhook(request)
        self.metrics.answered(response.status_code, time.perf_counter() - started)
        return response

    def _rejected(self, request: Request, status: int, code: str, detail: str,
                  headers: Mapping[str, str] | None = None) -> Response:
        """Log a rejection (never the body, signature or secrets) and return its response."""
        log.info("webhook rejected", extra={
            "status": status, "error": code, "detail": detail,
            "client": request.client.host if request.client else None,
        })
        return _error(status, code, detail, headers)

    async def _read_body(self, request: Request) -> bytes | None:
        """Return the body, or None as soon as it exceeds max_body_bytes."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _webhook(self, request: Request) -> Response:
        """Validate, normalise, encode and produce one webhook; return the answer."""
        headers = request.headers
        content_type = headers.get("content-type")
        if not _is_json(content_type):
            return self._rejected(request, 415, "unsupported_media_type",
                                  f"Content-Type must be application/json, got {content_type!r}")
        too_large = f"body exceeds max_body_bytes ({self.max_body})"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return self._rejected(request, 413, "payload_too_large", too_large, _CLOSE)
        try:
            body = await self._read_body(request)
        except ClientDisconnect:
            return self._rejected(request, 400, "client_disconnected", "body incomplete")
        if body is None:
            # Counted while streaming, so chunked or lying clients are cut off too.
            return self._rejected(request, 413, "payload_too_large", too_large, _CLOSE)

        if self.verifier.enabled:
            signature = headers.get("x-hook-signature")
            if signature is None:
                return self._rejected(request, 401, "missing_signature",
                                      "X-Hook-Signature header is required")
            if not self.verifier.verify(body, signature):
                return self._rejected(request, 401, "bad_signature",
                                      "X-Hook-Signature does not match any configured secret")

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return self._rejected(request, 400, "malformed_json", f"body is not UTF-8: {err}")
        try:
            payload = _DECODER.decode(text)
        except (ValueError, RecursionError) as err:
            return self._rejected(request, 400, "malformed_json", f"body is not JSON: {err}")
        if not isinstance(payload, dict):
            return self._rejected(request, 400, "not_an_object",
                                  f"body is a JSON {type(payload).__name__}, not an object")
        try:
            event = normalize(payload, text, self.netbox, datetime.now(UTC))
        except NotANetBoxEvent as err:
            return self._rejected(request, 400, "not_a_netbox_event", str(err))

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
            return self._rejected(request, 413, "record_too_large", str(err))
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
        return _json(202, {"source_id": event.source_id, "object_key": event.object_key,
                           "event_type": event.event_type.value})

    async def healthz(self, request: Request) -> Response:
        """Answer 200 while the process serves requests."""
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Answer 200 when the broker is reachable and the raw topic exists, else 503."""
        if self.producer is not None and await self.producer.ready():
            return _json(200, {"status": "ready"})
        return _error(503, "not_ready", f"broker unreachable or topic {self.topic} missing")

    async def metrics_endpoint(self, request: Request) -> Response:
        """Serve the Prometheus text exposition."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Render routing errors (404, 405) as the JSON error body."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return _error(status, code, detail, headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Render an unexpected failure as JSON; Starlette still logs the traceback."""
    return _error(500, "internal_error", "internal error")


def create_app(
    settings: Settings,
    producer: EventProducer | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> Starlette:
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

    app = Starlette(
        routes=[
            Route("/webhook", ingest.webhook, methods=["POST"]),
            Route("/healthz", ingest.healthz, methods=["GET"]),
            Route("/readyz", ingest.readyz, methods=["GET"]),
            Route("/metrics", ingest.metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.ingest = ingest
    app.state.metrics = metrics
    return app


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


def app_factory() -> Starlette:
    """Return the app for ``uvicorn --factory``: settings from $NBSTREAM_CONFIG (nbstream.yaml)."""
    return create_app(load_settings(Path(os.environ.get(CONFIG_ENV, "nbstream.yaml"))))
