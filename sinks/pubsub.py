"""The ``pubsub`` sink: publishes envelopes to a Google Cloud Pub/Sub topic, ordered per object.

Each record becomes one Pub/Sub message: the body is the envelope (DESIGN §6), the attributes
are the routing attributes (``sinks.attributes``) and the ordering key is the object key, so a
subscription with message ordering enabled receives each object's events in order.

Pub/Sub takes one ordering key per Publish request, so a batch is split per object into
requests of at most ``max_messages`` messages and ``max_bytes`` bytes. The objects' request
chains run concurrently (at most ``max_concurrency`` requests in flight) on the event loop
through the asyncio gRPC client; the requests of one object run strictly one after the other.
``write_batch`` returns only after every request was answered, so the runner stores offsets
only for messages Pub/Sub acknowledged. When a request fails, that object's later records are
not sent and are reported with the same error instance (held back), so a retry re-sends them in
order. No client-side retry runs: the runner owns backoff.

Why not the high-level ``pubsub_v1.PublisherClient``: it was built and measured first. It too
sends one request per ordering key, but commits each from a new thread, turns retries of
transient errors infinite once ordering is on, and keeps a paused state per key across
batches; it delivered 2x (distinct objects) to 5x (few objects) fewer events/s here
(benchmarks/sink_pubsub.py).

Error mapping, by exception type: ResourceExhausted, ServiceUnavailable, DeadlineExceeded,
InternalServerError, Aborted, Unknown, Cancelled and transport errors are retryable (honouring
a ``google.rpc.RetryInfo`` delay); PermissionDenied, Unauthenticated, NotFound,
InvalidArgument, FailedPrecondition and Unimplemented are permanent; any other API error is
retryable for HTTP 408, 429 and 5xx and permanent for other 4xx.

Credentials are Application Default Credentials unless ``credentials_file`` names a service
account key. With ``emulator_host`` the client speaks plaintext gRPC to that address with no
credentials, through a transport built here, so the process environment is never changed (the
client library still honours ``PUBSUB_EMULATOR_HOST`` on its own when that variable is set).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import google.auth
import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.oauth2 import service_account
from google.pubsub_v1.services.publisher import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
    PublisherGrpcAsyncIOTransport,
)
from google.pubsub_v1.types import PublishRequest, PubsubMessage
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no py.typed marker
from pydantic import Field, field_validator, model_validator

from schemas.envelope import envelope_json
from schemas.records import SinkRecord
from sinks.attributes import routing_attributes
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

__all__ = ["PubSubSettings", "PubSubSink", "classify"]

# Pub/Sub's resource-name rules: a letter, then 2-254 of these; never starting with "goog".
_TOPIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_SCOPES = ("https://www.googleapis.com/auth/pubsub",)
_PUBLISH_PERMISSION = "pubsub.topics.publish"
# Bytes a message adds to a request besides its data, attributes and key (field tags, lengths).
_MESSAGE_OVERHEAD = 64
# The raw protobuf classes: building proto-plus wrappers per message cost more than the request.
_RawMessage = PubsubMessage.pb()
_RawRequest = PublishRequest.pb()

_RETRYABLE: tuple[type[BaseException], ...] = (
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.Aborted,
    api_exceptions.Unknown,
    api_exceptions.Cancelled,
    api_exceptions.RetryError,
    auth_exceptions.TransportError,
    TimeoutError,
)
_PERMANENT: tuple[type[BaseException], ...] = (
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
    api_exceptions.NotFound,
    api_exceptions.InvalidArgument,
    api_exceptions.FailedPrecondition,
    api_exceptions.MethodNotImplemented,
)
_RETRYABLE_HTTP = frozenset({408, 429})


class PubSubSettings(SinkOptions):
    """A pubsub sink's own settings (``sinks.<name>.*`` besides the shared ones)."""

    project: str = Field(description="Google Cloud project id that owns the topic.")
    topic: str = Field(description="Topic id (short name); the sink builds projects/P/topics/T.")
    credentials_file: Path | None = Field(
        default=None,
        description="Service account key file; default: Application Default Credentials.",
    )
    emulator_host: str | None = Field(
        default=None,
        description="host:port of a Pub/Sub emulator; plaintext gRPC, no credentials.",
    )
    max_messages: int = Field(
        default=1000, ge=1, le=1000,
        description="Messages per Publish request at most (one object's; server max 1000).",
    )
    max_bytes: int = Field(
        default=1_000_000, ge=1_000, le=9_000_000,
        description="Bytes per Publish request at most (server max 10 MB).",
    )
    max_concurrency: int = Field(
        default=64, ge=1, le=1000, description="Publish requests in flight at most."
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds allowed for one Publish request."
    )
    open_timeout: float = Field(
        default=10.0, gt=0, description="Seconds allowed for the topic check at start-up."
    )

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        """Refuse an empty project or one that would break the resource path."""
        if not v or "/" in v or v != v.strip():
            raise ValueError(f"{v!r} is not a project id")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        """Refuse a topic id Pub/Sub would reject (and a full path: give the short name)."""
        if not _TOPIC_NAME.fullmatch(v) or v.lower().startswith("goog"):
            raise ValueError(
                f"{v!r} is not a topic id: a letter, then 2-254 letters, digits or -_.~+%, "
                "not starting with 'goog' (give the short name, not projects/.../topics/...)"
            )
        return v

    @field_validator("emulator_host")
    @classmethod
    def _emulator_host(cls, v: str | None) -> str | None:
        """Require host:port without a scheme, as PUBSUB_EMULATOR_HOST takes it."""
        if v is not None and not re.fullmatch(r"[^/\s]+:\d{1,5}", v):
            raise ValueError(f"{v!r} is not host:port")
        return v

    @model_validator(mode="after")
    def _one_credential_source(self) -> PubSubSettings:
        """Refuse a key file that the emulator would silently ignore."""
        if self.emulator_host is not None and self.credentials_file is not None:
            raise ValueError("credentials_file has no effect with emulator_host; set one")
        return self

    @property
    def topic_path(self) -> str:
        """Return the topic's full resource name."""
        return f"projects/{self.project}/topics/{self.topic}"


def _retry_after(err: api_exceptions.GoogleAPICallError) -> float | None:
    """Return the delay a ``google.rpc.RetryInfo`` detail of ``err`` asks for, if any."""
    for detail in err.details:
        if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
            return max(0.0, float(detail.retry_delay.ToTimedelta().total_seconds()))
    return None


def classify(err: BaseException, topic: str) -> RetryableError | PermanentError:
    """Return the contract error for an exception raised by publishing to ``topic``."""
    if isinstance(err, api_exceptions.GoogleAPICallError):
        detail = f"{type(err).__name__} ({err.code}) publishing to {topic}: {err.message}"
        retry_after = _retry_after(err)
    else:
        detail = f"{type(err).__name__} publishing to {topic}: {err}"
        retry_after = None
    if isinstance(err, _RETRYABLE):
        return RetryableError(detail, retry_after)
    if isinstance(err, _PERMANENT):
        return PermanentError(detail)
    if isinstance(err, api_exceptions.GoogleAPICallError):
        status = err.code
        if isinstance(status, int) and (status in _RETRYABLE_HTTP or 500 <= status <= 599):
            return RetryableError(detail, retry_after)
        if isinstance(status, int) and 400 <= status <= 499:
            return PermanentError(detail)
    # Anything unforeseen: retrying is safe, and the runner's retry bound still dead-letters
    # a record that can never pass.
    return RetryableError(detail)


def _message_size(data: bytes, attributes: dict[str, str], ordering_key: str) -> int:
    """Return about how many bytes a message adds to a Publish request."""
    fields = sum(len(k) + len(v) + 4 for k, v in attributes.items()) + len(ordering_key)
    return len(data) + fields + _MESSAGE_OVERHEAD


class PubSubSink(Sink[PubSubSettings]):
    """Publishes each record as one Pub/Sub message with routing attributes and ordering key."""

    type_name = "pubsub"
    Settings = PubSubSettings

    def __init__(self, name: str, settings: PubSubSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._topic = settings.topic_path
        self._client: PublisherAsyncClient | None = None

    def _key(self, field: str) -> str:
        """Return the configuration key of one of this sink's fields."""
        return f"sinks.{self.name}.{field}"

    def _where(self) -> str:
        """Return where the topic is, for messages: the emulator or Google's endpoint."""
        host = self.settings.emulator_host
        return f"{self._topic} on the emulator at {host}" if host else self._topic

    def _load_credentials(self) -> Credentials:
        """Return the key file's or the default credentials (blocking: files, metadata server)."""
        path = self.settings.credentials_file
        if path is not None:
            from_file = service_account.Credentials.from_service_account_file
            credentials: Credentials = from_file(  # type: ignore[no-untyped-call]  # untyped
                str(path), scopes=_SCOPES
            )
            return credentials
        default_credentials, _ = google.auth.default(scopes=_SCOPES)
        return default_credentials

    async def open(self) -> None:
        """Build the client and check the topic; raise SinkConfigError if it cannot be used."""
        host = self.settings.emulator_host
        if host is not None:
            # Plaintext and anonymous, as PUBSUB_EMULATOR_HOST would make it, without touching
            # the environment every other client in the process shares.
            transport = PublisherGrpcAsyncIOTransport(
                host=host, channel=grpc.aio.insecure_channel(host)
            )
            self._client = PublisherAsyncClient(transport=transport)
        else:
            try:
                credentials = await asyncio.to_thread(self._load_credentials)
            except auth_exceptions.DefaultCredentialsError as err:
                raise SinkConfigError(
                    f"sinks.{self.name}: no Google credentials found ({err}); set "
                    f"{self._key('credentials_file')} or configure Application Default "
                    "Credentials"
                ) from None
            except (auth_exceptions.GoogleAuthError, OSError, ValueError) as err:
                raise SinkConfigError(
                    f"{self._key('credentials_file')}: cannot load "
                    f"{self.settings.credentials_file}: {err}"
                ) from None
            self._client = PublisherAsyncClient(credentials=credentials)
        try:
            await self._check_topic(self._client)
        except SinkConfigError:
            await self.close()
            raise

    async def _check_topic(self, client: PublisherAsyncClient) -> None:
        """Raise SinkConfigError unless the topic exists and these credentials may publish."""
        try:
            await client.get_topic(
                topic=self._topic, retry=None, timeout=self.settings.open_timeout
            )
        except api_exceptions.NotFound:
            raise SinkConfigError(
                f"{self._key('topic')}: topic {self._where()} does not exist"
            ) from None
        except api_exceptions.PermissionDenied:
            # roles/pubsub.publisher may publish but not read the topic: ask whether it may
            # publish, which any caller may ask (testIamPermissions needs no permission).
            await self._check_publish_permission(client)
        except api_exceptions.Unauthenticated as err:
            raise SinkConfigError(
                f"sinks.{self.name}: credentials rejected for topic {self._where()}: "
                f"{err.message}"
            ) from None
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as err:
            raise SinkConfigError(
                f"sinks.{self.name}: cannot reach topic {self._where()}: "
                f"{type(err).__name__}: {getattr(err, 'message', err)}"
            ) from None

    async def _check_publish_permission(self, client: PublisherAsyncClient) -> None:
        """Raise SinkConfigError unless the credentials hold pubsub.topics.publish."""
        try:
            answer = await client.test_iam_permissions(
                request={"resource": self._topic, "permissions": [_PUBLISH_PERMISSION]},
                retry=None,
                timeout=self.settings.open_timeout,
            )
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as err:
            raise SinkConfigError(
                f"sinks.{self.name}: permission denied on topic {self._where()}: "
                f"{type(err).__name__}: {getattr(err, 'message', err)}"
            ) from None
        if _PUBLISH_PERMISSION not in answer.permissions:
            raise SinkConfigError(
                f"sinks.{self.name}: the credentials may not publish to topic {self._where()}"
                f" (missing {_PUBLISH_PERMISSION})"
            )

    async def close(self) -> None:
        """Close the client's channel."""
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()  # type: ignore[no-untyped-call]  # untyped

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Publish every record and await each acknowledgement; raise PartialBatchError."""
        if not records:
            return
        client = self._client
        if client is None:
            raise RetryableError("pubsub sink is not open")
        now = self.context.now()
        failed: dict[int, RetryableError | PermanentError] = {}
        await by_object(records, self.settings.max_concurrency,
                        lambda indices: self._publish_in_order(client, records, indices, now,
                                                               failed))
        if failed:
            raise PartialBatchError(failed)

    def _requests(
        self, records: Sequence[SinkRecord], indices: list[int], now: datetime
    ) -> list[tuple[list[int], PublishRequest]]:
        """Return one object's records as Publish requests within the count and size bounds.

        A message larger than ``max_bytes`` travels alone, so if Pub/Sub refuses it, it is
        the only record that request fails.
        """
        s = self.settings
        requests: list[tuple[list[int], PublishRequest]] = []
        batch: list[int] = []
        messages: list[Any] = []
        size = 0
        for index in indices:
            record = records[index]
            data = envelope_json(record, now)
            attributes = routing_attributes(record)
            grows = _message_size(data, attributes, record.object_key)
            if messages and (len(messages) >= s.max_messages or size + grows > s.max_bytes):
                requests.append((batch, self._request(messages)))
                batch, messages, size = [], [], 0
            batch.append(index)
            messages.append(
                _RawMessage(data=data, attributes=attributes, ordering_key=record.object_key)
            )
            size += grows
        if messages:
            requests.append((batch, self._request(messages)))
        return requests

    def _request(self, messages: list[Any]) -> PublishRequest:
        """Return a Publish request of raw ``messages`` to the topic, wrapped without a copy."""
        request: PublishRequest = PublishRequest.wrap(
            _RawRequest(topic=self._topic, messages=messages)
        )
        return request

    async def _publish_in_order(
        self,
        client: PublisherAsyncClient,
        records: Sequence[SinkRecord],
        indices: list[int],
        now: datetime,
        failed: dict[int, RetryableError | PermanentError],
    ) -> None:
        """Publish one object's requests one after the other; after a failure, send no more."""
        requests = self._requests(records, indices, now)
        for position, (batch, request) in enumerate(requests):
            error: RetryableError | PermanentError | None = None
            try:
                answer = await client.publish(
                    request=request,
                    retry=None,  # the runner retries, with backoff and a bound
                    timeout=self.settings.timeout,
                )
            except Exception as err:  # classified: by type, unforeseen ones retryable
                error = classify(err, self._topic)
            else:
                if len(answer.message_ids) != len(batch):
                    error = RetryableError(
                        f"{len(answer.message_ids)} message ids for {len(batch)} messages "
                        f"published to {self._topic}"
                    )
            if error is not None:
                # Held back: the object's unsent records carry the same error instance.
                for later, _ in requests[position:]:
                    for index in later:
                        failed[index] = error
                return
