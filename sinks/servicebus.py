"""The ``servicebus`` sink: delivers envelopes to an Azure Service Bus queue or topic.

Each record becomes one message: the envelope (DESIGN §6) as the body, ``message_id`` = the
record's ``egress_id`` (so Service Bus duplicate detection drops a redelivery), ``subject`` =
the event type, ``content_type`` ``application/json``, the routing attributes as application
properties, and, with ``session`` on, ``session_id`` = the object key.

Messages go out in ``ServiceBusMessageBatch``es sized by the link's maximum message size and
sent one after the other in record order; Service Bus accepts or refuses a batch as a whole.
After a retryable failure nothing more is sent: that batch's records and every later record
are reported with the same error, so a retry re-sends them in their original order. A
permanent failure fails only its batch's records, and a message too large for an empty batch
only its own record. The SDK's own retries are turned off: the runner owns backoff.

Error mapping, by exception type (and AMQP condition for the SDK's generic error): server
busy, quota exceeded, timeouts, connection and communication errors are retryable;
authentication, authorization, missing or disabled entity, oversized messages and requests the
service refuses as invalid are permanent. Open fails fast with SinkConfigError when the
entity is missing or the credentials are refused (Service Bus answers the token for a missing
entity with 404).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.identity.aio import DefaultAzureCredential
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
)
from pydantic import Field, SecretStr, model_validator

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

__all__ = ["ServiceBusSettings", "ServiceBusSink", "classify"]

CONTENT_TYPE = "application/json"
# Seconds a send may overrun its own timeout before the sink gives up on it.
_SEND_GRACE = 5.0
PropertyValue = int | float | bytes | bool | str | UUID

_PERMANENT_TYPES: tuple[type[ServiceBusError], ...] = (
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    MessagingEntityNotFoundError,
    MessagingEntityDisabledError,
    MessageSizeExceededError,
)
# Quota exceeded means the entity is full (or the namespace out of connections): it drains.
_RETRYABLE_TYPES: tuple[type[ServiceBusError], ...] = (
    ServiceBusServerBusyError,
    ServiceBusQuotaExceededError,
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
)
# AMQP conditions of requests the service refuses as invalid (a message without a session id
# on a session-enabled entity is ``amqp:not-allowed``). The SDK raises these as its generic
# ServiceBusError and marks most of them retryable, but no retry can make them pass.
_PERMANENT_CONDITIONS = frozenset({
    "amqp:not-allowed",
    "amqp:invalid-field",
    "amqp:decode-error",
    "amqp:not-implemented",
    "amqp:precondition-failed",
    "com.microsoft:argument-error",
    "com.microsoft:argument-out-of-range",
    "com.microsoft:precondition-failed",
})
# Network failures the SDK wraps as a generic ServiceBusError (a token endpoint unreachable).
_TRANSIENT_CAUSES = (ServiceRequestError, ServiceResponseError, TimeoutError, OSError)


class ServiceBusSettings(SinkOptions):
    """A Service Bus sink's own settings (``sinks.<name>.*`` besides the shared ones)."""

    connection_string: SecretStr | None = Field(
        default=None,
        description="Namespace connection string with a SAS key (Endpoint=sb://…;"
        "SharedAccessKeyName=…;SharedAccessKey=…); or use fully_qualified_namespace.",
    )
    fully_qualified_namespace: str | None = Field(
        default=None,
        description="Namespace host (<name>.servicebus.windows.net), authenticated with "
        "azure.identity's DefaultAzureCredential; or use connection_string.",
    )
    queue: str | None = Field(default=None, description="Queue to send to; or use topic.")
    topic: str | None = Field(default=None, description="Topic to send to; or use queue.")
    session: bool = Field(
        default=False,
        description="Set each message's session_id to its object key; required by "
        "session-enabled entities, and gives FIFO per object to session receivers.",
    )
    timeout: float = Field(
        default=30.0, gt=0,
        description="Seconds allowed for opening the link, and for sending one batch.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ServiceBusSettings:
        """Require one way to authenticate and one destination."""
        if (self.connection_string is None) == (self.fully_qualified_namespace is None):
            raise ValueError("set exactly one of connection_string or fully_qualified_namespace")
        if (self.queue is None) == (self.topic is None):
            raise ValueError("set exactly one of queue or topic")
        return self


def _condition(err: ServiceBusError) -> str | None:
    """Return the AMQP error condition the SDK recorded for ``err``, if any."""
    # The SDK keeps the condition only in a private attribute (and in the message text, which
    # we never parse); it has been stable across the 7.x releases.
    value = getattr(err, "_condition", None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def classify(err: ServiceBusError, message: str) -> RetryableError | PermanentError:
    """Return the contract error, saying ``message``, for an SDK error.

    Decided by the error's type, then its AMQP condition, then its cause, then the SDK's own
    retryable flag.
    """
    if isinstance(err, _PERMANENT_TYPES):
        return PermanentError(message)
    if isinstance(err, _RETRYABLE_TYPES):
        return RetryableError(message)
    if _condition(err) in _PERMANENT_CONDITIONS:
        return PermanentError(message)
    if isinstance(err.inner_exception, _TRANSIENT_CAUSES):
        return RetryableError(message)
    # Everything else: the SDK's own verdict (it marks link and connection trouble retryable).
    if getattr(err, "_retryable", False):
        return RetryableError(message)
    return PermanentError(message)


def _added(batch: ServiceBusMessageBatch, message: ServiceBusMessage) -> bool:
    """Add ``message`` to ``batch``; return False (batch unchanged) if it does not fit."""
    try:
        batch.add_message(message)
    except MessageSizeExceededError:
        return False
    return True


class ServiceBusSink(Sink[ServiceBusSettings]):
    """Sends envelopes to one Service Bus queue or topic in size-bounded message batches."""

    type_name = "servicebus"
    Settings = ServiceBusSettings

    def __init__(self, name: str, settings: ServiceBusSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._client: ServiceBusClient | None = None
        self._sender: ServiceBusSender | None = None
        self._credential: DefaultAzureCredential | None = None
        self._kind, self._entity = (
            ("queue", settings.queue) if settings.queue is not None
            else ("topic", str(settings.topic))
        )

    def _where(self) -> str:
        """Return the destination for messages: ``queue 'orders' on <namespace>``."""
        namespace = (self._client.fully_qualified_namespace if self._client is not None
                     else self.settings.fully_qualified_namespace or "?")
        return f"{self._kind} {self._entity!r} on {namespace}"

    def _redact(self, text: str) -> str:
        """Return ``text`` with the connection string's secrets removed, should the SDK echo."""
        secret = self.settings.connection_string
        if secret is None:
            return text
        value = secret.get_secret_value()
        text = text.replace(value, "***")
        for part in value.split(";"):
            key, sep, val = part.partition("=")
            if sep and val and key.strip().lower() in ("sharedaccesskey", "sharedaccesssignature"):
                text = text.replace(val, "***")
        return text

    async def open(self) -> None:
        """Connect, authenticate and attach the sender link; raise SinkConfigError if refused."""
        s = self.settings
        where = f"sinks.{self.name}"
        try:
            if s.connection_string is not None:
                self._client = ServiceBusClient.from_connection_string(
                    s.connection_string.get_secret_value(),
                    retry_total=0,  # the runner owns retries and backoff
                    try_timeout=s.timeout,
                )
            else:
                self._credential = DefaultAzureCredential()
                self._client = ServiceBusClient(
                    str(s.fully_qualified_namespace), self._credential,
                    retry_total=0, try_timeout=s.timeout,
                )
            self._sender = self._new_sender(self._client)
        except (ValueError, TypeError) as err:
            await self.close()
            raise SinkConfigError(f"{where}: {self._redact(str(err))}") from None
        try:
            # Creating a batch opens the connection, puts the token and attaches the link: a
            # missing entity or refused credentials fail here, not at the first send.
            await self._sender.create_message_batch()
        except (AzureError, OSError, TimeoutError, ValueError) as err:
            detail = self._detail(err)
            target = self._where()
            await self.close()
            raise SinkConfigError(f"{where}: cannot open {target}: {detail}") from None

    def _new_sender(self, client: ServiceBusClient) -> ServiceBusSender:
        """Return a sender for the configured queue or topic (it connects when first used)."""
        if self.settings.queue is not None:
            return client.get_queue_sender(self.settings.queue)
        return client.get_topic_sender(str(self.settings.topic))

    async def _reset_sender(self, stuck: ServiceBusSender) -> None:
        """Replace a sender whose send had to be cancelled: its link state is unknown."""
        if self._client is None or self._sender is not stuck:
            return
        self._sender = self._new_sender(self._client)
        try:
            await stuck.close()
        except Exception as err:  # noqa: BLE001 - the replacement is what matters
            self.context.logger.warning("error closing a stuck servicebus sender", extra={
                "sink": self.name, "error": self._detail(err)})

    def _detail(self, err: BaseException) -> str:
        """Return a one-line, secret-free description of ``err`` and its cause."""
        text = f"{type(err).__name__}: {err}"
        cause = err.inner_exception if isinstance(err, AzureError) else None
        if cause is not None and str(cause) and str(cause) not in text:
            text += f" ({type(cause).__name__}: {cause})"
        return self._redact(" ".join(text.split()))

    async def close(self) -> None:
        """Close the sender, the client and the credential."""
        sender, client, credential = self._sender, self._client, self._credential
        self._sender = self._client = self._credential = None
        for closeable in (sender, client, credential):
            if closeable is not None:
                try:
                    await closeable.close()
                except Exception as err:  # noqa: BLE001 - closing must not mask anything
                    self.context.logger.warning(
                        "error closing the servicebus sink", extra={
                            "sink": self.name, "error": self._detail(err)})

    def _message(self, record: SinkRecord, body: bytes) -> ServiceBusMessage:
        """Return the Service Bus message of ``record`` (raises ValueError if invalid)."""
        # Rebuilt as the SDK's property map type (dicts are invariant in key and value).
        properties: dict[str | bytes, PropertyValue] = {
            k: v for k, v in routing_attributes(record).items()}
        return ServiceBusMessage(
            body,
            message_id=record.egress_id,
            subject=record.source_type.value,
            content_type=CONTENT_TYPE,
            application_properties=properties,
            session_id=record.object_key if self.settings.session else None,
        )

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Send ``records`` in message batches, in order; raise PartialBatchError on failure."""
        if not records:
            return
        sender = self._sender
        if sender is None:
            raise RetryableError("servicebus sink is not open")
        now = self.context.now()
        failed: dict[int, RetryableError | PermanentError] = {}
        batch: ServiceBusMessageBatch | None = None
        members: list[int] = []  # indices of the records in ``batch``
        for index, record in enumerate(records):
            body = envelope_json(record, now)
            try:
                message = self._message(record, body)
            except ValueError as err:  # a property the service would refuse (too long)
                failed[index] = PermanentError(f"invalid message: {err}")
                continue
            if batch is not None and _added(batch, message):
                members.append(index)
                continue
            if batch is not None and members:  # full: send it; this message starts the next
                if not await self._send(sender, batch, records, members, failed):
                    raise PartialBatchError(failed)
                members = []
            batch = await self._new_batch(sender, records, index, failed)
            if batch is None:
                raise PartialBatchError(failed)
            if _added(batch, message):
                members.append(index)
            else:
                failed[index] = PermanentError(
                    f"the message ({len(body)} body bytes) exceeds the batch limit of "
                    f"{batch.max_size_in_bytes} bytes of {self._where()}")
        if batch is not None and members:
            await self._send(sender, batch, records, members, failed)
        if failed:
            raise PartialBatchError(failed)

    async def _new_batch(
        self,
        sender: ServiceBusSender,
        records: Sequence[SinkRecord],
        start: int,
        failed: dict[int, RetryableError | PermanentError],
    ) -> ServiceBusMessageBatch | None:
        """Return an empty batch; if the link cannot give one, fail ``start`` and all later."""
        error: RetryableError | PermanentError
        try:
            return await sender.create_message_batch()
        except ServiceBusError as err:
            error = classify(err, f"cannot reopen {self._where()}: {self._detail(err)}")
        except (TimeoutError, OSError) as err:
            error = RetryableError(f"cannot reopen {self._where()}: {self._detail(err)}")
        for later in range(start, len(records)):
            failed.setdefault(later, error)
        return None

    async def _send(
        self,
        sender: ServiceBusSender,
        batch: ServiceBusMessageBatch,
        records: Sequence[SinkRecord],
        members: list[int],
        failed: dict[int, RetryableError | PermanentError],
    ) -> bool:
        """Send one batch; return whether later batches may still be sent.

        A retryable failure fails the batch and every later record with the same error (the
        batch may be retried as is, in order); a permanent one fails only the batch.
        """
        timeout = self.settings.timeout
        error: RetryableError | PermanentError
        try:
            # The SDK bounds the send by ``timeout``; the outer bound only guards against a
            # send that never returns (a response the SDK cannot parse leaves it waiting).
            async with asyncio.timeout(timeout + _SEND_GRACE):
                await sender.send_messages(batch, timeout=timeout)
            return True
        except ServiceBusError as err:
            error = classify(
                err, f"sending {len(members)} message(s) to {self._where()}: {self._detail(err)}")
        except TimeoutError:
            error = RetryableError(f"sending to {self._where()}: no answer within {timeout}s")
            await self._reset_sender(sender)
        except OSError as err:
            error = RetryableError(f"sending to {self._where()}: {self._detail(err)}")
        for index in members:
            failed[index] = error
        if isinstance(error, PermanentError):
            return True
        for later in range(members[-1] + 1, len(records)):
            failed.setdefault(later, error)
        return False
