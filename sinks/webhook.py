"""The ``webhook`` sink: HTTP delivery with NetBox Webhook's fields, templates and signature.

Field names and meanings follow NetBox's Webhook model (payload_url, http_method,
http_content_type, additional_headers, body_template, secret, ssl_verification, ca_file_path);
``body`` chooses between the nbstream envelope (DESIGN §6) and NetBox's own default body.

Within a batch, records of different objects are sent concurrently over one pooled
``aiohttp`` session, and the records of one object strictly one after the other. When a record
fails retryably, the later records of its object are not attempted and are reported with the
same error, so a retry re-sends them in their original order. A permanent failure does not
hold its object back: that record leaves the ordered stream for the dead-letter topic anyway.

Status mapping (STYLE): 2xx delivered; 408, 429 and 5xx retryable, honouring ``Retry-After``;
any other status permanent; connection errors and timeouts retryable; template errors permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import yarl
from pydantic import Field, SecretStr, model_validator

from schemas.envelope import envelope_json
from schemas.records import SinkRecord
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
)
from sinks.ordering import by_object
from sinks.templating import TemplateEnvironment, header_safe, is_template, validate_url

__all__ = ["WebhookSettings", "WebhookSink", "netbox_context", "parse_retry_after"]

# Statuses that mean "try again later" although they are not 5xx.
_RETRYABLE_4XX = frozenset({408, 429})
# How much of an error response's body goes into the error message (and the dead letter).
_ERROR_BODY_CHARS = 200


class WebhookSettings(SinkOptions):
    """A webhook sink's own settings (``sinks.<name>.*`` besides the shared ones)."""

    payload_url: str = Field(
        description="Receiver URL, http or https; a Jinja2 template rendered per record."
    )
    http_method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        default="POST", description="HTTP method of every request."
    )
    http_content_type: str = Field(
        default="application/json", description="Content-Type header of every request."
    )
    additional_headers: str = Field(
        default="", description="Extra headers as 'Name: Value' lines; a Jinja2 template."
    )
    body_template: str | None = Field(
        default=None,
        description="Jinja2 body rendered with NetBox's webhook context; overrides body.",
    )
    secret: SecretStr | None = Field(
        default=None,
        description="Signs each body: X-Hook-Signature = hex HMAC-SHA512, as NetBox does.",
    )
    ssl_verification: bool = Field(
        default=True, description="Verify the receiver's TLS certificate."
    )
    ca_file_path: Path | None = Field(
        default=None, description="CA bundle for TLS verification; default: the system's."
    )
    timeout: float = Field(
        default=10.0, gt=0, description="Seconds allowed for one request, in total."
    )
    body: Literal["envelope", "netbox"] = Field(
        default="envelope",
        description="'envelope' (DESIGN §6) or 'netbox': NetBox's original payload, unchanged.",
    )
    max_connections: int = Field(
        default=64, ge=1, description="Connection pool size: concurrent requests at most."
    )
    env_allow: tuple[str, ...] = Field(
        default=(),
        description="fnmatch patterns of environment variables the env filter may read.",
    )

    @model_validator(mode="after")
    def _ca_needs_verification(self) -> WebhookSettings:
        """Refuse a CA file with verification off, as NetBox does."""
        if self.ca_file_path is not None and not self.ssl_verification:
            raise ValueError("ca_file_path requires ssl_verification")
        return self


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def netbox_context(record: SinkRecord, payload: Any) -> dict[str, Any]:
    """Return NetBox's webhook template context for ``record``, built from its original payload.

    Every key of the payload is kept (``request`` and ``context`` included); the keys older
    templates use are filled in where a NetBox release no longer sends them (``model``,
    ``username``, ``request_id``), and ``egress_id`` and ``source_id`` are added.
    """
    ctx: dict[str, Any] = dict(payload) if isinstance(payload, dict) else {}
    object_type = ctx.get("object_type") or record.object_type
    ctx["object_type"] = object_type
    ctx.setdefault("model", object_type.rpartition(".")[2])
    raw_request = ctx.get("request")
    request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
    ctx.setdefault("username", request.get("user"))
    ctx.setdefault("request_id", request.get("id"))
    for key in ("event", "timestamp", "data", "snapshots"):
        ctx.setdefault(key, None)
    ctx["egress_id"] = record.egress_id
    ctx["source_id"] = record.source_id
    return ctx


def _safe_url(url: str | yarl.URL) -> str:
    """Return ``url`` without credentials or query, fit for logs and dead letters."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _user_agent() -> str:
    """Return ``nbstream/<version>``."""
    try:
        return f"nbstream/{version('nbstream')}"
    except PackageNotFoundError:  # a source tree that was never installed
        return "nbstream/0.0.0+source"


class WebhookSink(Sink[WebhookSettings]):
    """Delivers each record as one HTTP request, as a NetBox webhook would."""

    type_name = "webhook"
    Settings = WebhookSettings

    def __init__(self, name: str, settings: WebhookSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._templates = TemplateEnvironment(settings.env_allow, context.environ)
        self._session: aiohttp.ClientSession | None = None
        # A literal payload_url is parsed once: per-request URL parsing is measurable at 5k/s.
        self._static_url: yarl.URL | None = None
        self._secret = (
            settings.secret.get_secret_value().encode() if settings.secret is not None else None
        )
        self._needs_context = bool(
            settings.body_template
            or is_template(settings.payload_url)
            or is_template(settings.additional_headers)
        )
        self._user_agent = _user_agent()

    def _key(self, field: str) -> str:
        """Return the configuration key of one of this sink's fields."""
        return f"sinks.{self.name}.{field}"

    async def open(self) -> None:
        """Compile the templates, check the URL scheme and build the pool; no request is sent."""
        s = self.settings
        for field, source in (
            ("payload_url", s.payload_url),
            ("additional_headers", s.additional_headers),
            ("body_template", s.body_template),
        ):
            if source and (field == "body_template" or is_template(source)):
                self._templates.compile(
                    source, self._key(field), headers=field == "additional_headers"
                )
        self._check_url()
        if s.additional_headers and not is_template(s.additional_headers):
            try:
                self._templates.render_headers(s.additional_headers, {})
            except PermanentError as err:
                raise SinkConfigError(f"{self._key('additional_headers')}: {err}") from None
        ssl_ctx: ssl.SSLContext | bool = False
        if s.ssl_verification:
            try:
                ssl_ctx = ssl.create_default_context(
                    cafile=str(s.ca_file_path) if s.ca_file_path else None
                )
            except (OSError, ssl.SSLError) as err:
                raise SinkConfigError(f"{self._key('ca_file_path')}: {err}") from None
        connector = aiohttp.TCPConnector(limit=s.max_connections, ssl=ssl_ctx)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.timeout),
            # NetBox sends the body as given and reads no cookies; neither do we.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    def _check_url(self) -> None:
        """Validate a literal payload_url, or the literal scheme in front of a templated one."""
        url = self.settings.payload_url
        if not is_template(url):
            try:
                self._static_url = yarl.URL(validate_url(url))
            except PermanentError as err:
                raise SinkConfigError(f"{self._key('payload_url')}: {err}") from None
            return
        # A templated URL is only known per record, but a literal scheme is known now.
        scheme, sep, _ = url.partition("://")
        if sep and not is_template(scheme) and scheme.lower() not in ("http", "https"):
            raise SinkConfigError(
                f"{self._key('payload_url')}: scheme {scheme!r} is not allowed; use http or https"
            )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Send every record; raise PartialBatchError naming the ones that failed."""
        if not records:
            return
        session = self._session
        if session is None:
            raise RetryableError("webhook sink is not open")
        failed: dict[int, RetryableError | PermanentError] = {}
        await by_object(records, self.settings.max_connections,
                        lambda indices: self._send_in_order(session, records, indices, failed))
        if failed:
            raise PartialBatchError(failed)

    async def _send_in_order(
        self,
        session: aiohttp.ClientSession,
        records: Sequence[SinkRecord],
        indices: list[int],
        failed: dict[int, RetryableError | PermanentError],
    ) -> None:
        """Send one object's records sequentially; after a retryable failure, send no more."""
        for position, index in enumerate(indices):
            try:
                await self._send(session, records[index])
            except RetryableError as err:
                for later in indices[position:]:
                    failed[later] = err
                return
            except PermanentError as err:
                failed[index] = err

    def _request(self, record: SinkRecord) -> tuple[str | yarl.URL, bytes, dict[str, str]]:
        """Return the URL, body and headers of ``record``'s request, stamping egress time now."""
        s = self.settings
        ctx: Mapping[str, Any] = {}
        if self._needs_context:
            try:
                payload = json.loads(record.message)
            except ValueError as err:
                raise PermanentError(f"message is not JSON: {err}") from None
            ctx = netbox_context(record, payload)
        url: str | yarl.URL = self._static_url or self._templates.render_url(s.payload_url, ctx)
        if s.body_template:
            body = self._templates.render(s.body_template, ctx).encode()
        elif s.body == "netbox":
            body = record.message.encode()
        else:
            body = envelope_json(record, self.context.now())
        headers = {
            "Content-Type": s.http_content_type,
            "User-Agent": self._user_agent,
            "X-NBStream-Egress-Id": record.egress_id,
            "X-NBStream-Source-Id": record.source_id,
            "X-NBStream-Event": record.source_type.value,
            "X-NBStream-Object-Type": header_safe(record.object_type),
            "X-NBStream-Object-Key": header_safe(record.object_key),
        }
        if s.additional_headers:
            headers.update(self._templates.render_headers(s.additional_headers, ctx))
        if self._secret is not None:
            headers["X-Hook-Signature"] = hmac.new(self._secret, body, hashlib.sha512).hexdigest()
        return url, body, headers

    async def _send(self, session: aiohttp.ClientSession, record: SinkRecord) -> None:
        """Deliver one record; raise RetryableError or PermanentError."""
        url, body, headers = self._request(record)
        try:
            async with session.request(
                self.settings.http_method, url, data=body, headers=headers
            ) as response:
                status = response.status
                # Read the whole answer so the connection goes back to the pool for reuse.
                content = await response.read()
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.TooManyRedirects, aiohttp.InvalidURL) as err:
            raise PermanentError(f"cannot send to {_safe_url(url)}: {err}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            # Connection, TLS and protocol failures, timeouts: the receiver may recover. (This
            # comes before ValueError: aiohttp's certificate errors are ValueErrors too.)
            raise RetryableError(
                f"{type(err).__name__} sending to {_safe_url(url)}: {err}"
            ) from None
        except ValueError as err:
            # Raised while building the request (a header aiohttp refuses): permanent.
            raise PermanentError(f"cannot send to {_safe_url(url)}: {err}") from None
        if 200 <= status <= 299:
            return
        detail = content[:_ERROR_BODY_CHARS].decode("utf-8", "replace")
        message = f"HTTP {status} from {_safe_url(url)}: {detail}"
        if status in _RETRYABLE_4XX or 500 <= status <= 599:
            raise RetryableError(message, parse_retry_after(retry_after, self.context.now()))
        raise PermanentError(message)
