"""The ``mqtt`` sink: publishes each envelope to an MQTT broker (v5 or v3.1.1) with paho-mqtt.

Every record becomes one PUBLISH on a topic rendered from a template with the record's routing
attributes (``netbox/{netbox_id}/{object_type}/{event}`` by default). With MQTT 5 the routing
attributes also travel as user properties, with content type ``application/json`` and the
UTF-8 payload format indicator, so subscribers filter without parsing the body (DESIGN §6).

Delivery: one paho client per connection runs its network loop in its own thread
(``loop_start``); ``write_batch`` publishes in record order from the event loop (paho only
enqueues) and returns once the broker acknowledged every message: PUBACK for QoS 1, PUBCOMP
for QoS 2, the socket write for QoS 0. Acknowledgements cross into asyncio with
``call_soon_threadsafe``, coalesced into one wake-up per burst. At most ``max_inflight``
messages (lowered to the broker's MQTT 5 Receive Maximum) await acknowledgement at once.

Order: MQTT keeps the order of one connection's messages of one QoS, so publishing a batch in
record order keeps per-object order, also across the object's different event topics. After a
retryable failure of a record, its object's later records are reported with the same error,
even ones the broker already took: the retry re-sends them after the failed one, so the last
message of an object stays its latest state (the duplicate carries the same ``egress_id``).

Sessions: every connection starts clean (MQTT 5 clean start, v3.1.1 clean session), so after
a drop neither paho nor the broker re-sends a message the runner also retries. The durable
state is the Kafka offset; an MQTT session would add nothing but duplicates. The default
client id is ``nbstream-<sink>-<random>``: two workers of one sink must not share an id, or
the broker would disconnect each whenever the other connects.

Errors: a broker that is unreachable or refuses the connection at ``open`` is a
SinkConfigError. During a batch, a lost connection, a timeout or a refused reconnect for a
transient reason is retryable (the next batch reconnects); a reconnect refused for bad
credentials or authorisation is permanent. An MQTT 5 PUBACK, or PUBREC for QoS 2, with a
failure reason code fails that record: 0x97 quota exceeded, 0x89 server busy and 0x91 packet
id in use are retryable, every other code (0x87 not authorized, 0x90 topic name invalid, 0x95
packet too large, 0x99 payload format invalid, ...) permanent. A topic that renders with a
wildcard or NUL, or a message over the broker's Maximum Packet Size, is permanent for that
record. MQTT 3.1.1 has no reason codes: a v3.1.1 broker that drops a message (an ACL denial)
still acknowledges it, so prefer MQTT 5.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import string
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from paho.mqtt.client import (
    MQTT_CLEAN_START_FIRST_ONLY,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessageInfo,
    MQTTv5,
    MQTTv311,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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

__all__ = [
    "DEFAULT_TOPIC",
    "TOPIC_PLACEHOLDERS",
    "MqttSettings",
    "MqttSink",
    "MqttTlsSettings",
    "ack_error",
    "batch_failures",
    "parse_topic_template",
]

DEFAULT_TOPIC = "netbox/{netbox_id}/{object_type}/{event}"
# The keys of sinks.attributes.routing_attributes: the names a topic template may use.
TOPIC_PLACEHOLDERS = frozenset(
    {"source_type", "object_type", "netbox_id", "event", "object_key", "egress_id"}
)
# Characters no MQTT topic name may contain: the two wildcards, and NUL (MQTT-1.5.4-2).
_FORBIDDEN = frozenset("+#\0")
_MAX_UTF8 = 65535  # an MQTT UTF-8 string (topic, property) has a two-byte length
# PUBACK/PUBREC reason codes that say "not now" rather than "never".
_RETRYABLE_CODES = frozenset({
    0x89,  # Server busy (not a PUBACK code in the spec, but a broker may send it)
    0x91,  # Packet Identifier in use: a session glitch a fresh connection clears
    0x97,  # Quota exceeded
})
# CONNACK reason codes that only a configuration change can fix.
_REFUSED_FOR_GOOD = frozenset({
    0x84,  # Unsupported Protocol Version
    0x85,  # Client Identifier not valid
    0x86,  # Bad User Name or Password
    0x87,  # Not authorized
    0x8A,  # Banned
    0x8C,  # Bad authentication method
})
# paho allocates 16-bit message ids; more unacknowledged messages than this would reuse one.
_MAX_WINDOW = 65535
# Publish properties every MQTT 5 message carries: payload format UTF-8, content type JSON.
_CONTENT_TYPE = "application/json"


def _utf8(value: str) -> bytes:
    """Return ``value`` as an MQTT UTF-8 string: two-byte length, then the bytes."""
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(value: int) -> bytes:
    """Return ``value`` as an MQTT Variable Byte Integer."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


_STATIC_PROPERTIES = b"\x01\x01" + b"\x03" + _utf8(_CONTENT_TYPE)
# The routing attributes' names encoded once, as the start of a User Property (0x26).
_USER_PROPERTY_KEYS = {name: b"\x26" + _utf8(name) for name in TOPIC_PLACEHOLDERS}


class _PackedProperties(Properties):
    """MQTT 5 publish properties encoded once by the sink; paho only calls ``pack()``.

    Measured here, paho's generic Properties took about 60 µs per message to build and pack,
    a third of the sink's CPU time per record; these are the same bytes for about 5 µs.
    """

    _packed: bytes

    def __init__(self, attributes: Mapping[str, str]) -> None:
        # Properties.__init__ builds per-instance lookup tables this class never uses.
        body = _STATIC_PROPERTIES + b"".join(
            (_USER_PROPERTY_KEYS.get(k) or b"\x26" + _utf8(k)) + _utf8(v)
            for k, v in attributes.items()
        )
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", _varint(len(body)) + body)

    def pack(self) -> bytes:
        """Return the encoded properties, length prefix included."""
        return self._packed

    def __str__(self) -> str:
        """Return a short description for paho's debug log."""
        return f"[{len(self.pack())} bytes: UserProperty, ContentType, PayloadFormatIndicator]"


class MqttTlsSettings(BaseModel):
    """TLS towards the broker; present means on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path | None = Field(
        default=None, description="CA bundle the broker's certificate is checked against; "
        "default: the system's.")
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for brokers that require one.")
    key_file: Path | None = Field(
        default=None, description="Private key of cert_file, when not inside cert_file.")
    insecure: bool = Field(
        default=False, description="Skip the check that the certificate names the host "
        "(the certificate chain is still verified), as paho's tls_insecure_set.")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttTlsSettings:
        """Refuse a key without its certificate."""
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file requires cert_file")
        return self


def parse_topic_template(template: str) -> tuple[tuple[str, str | None], ...]:
    """Return the template's (literal text, placeholder or None) parts.

    Raises ValueError when the template is empty, starts with ``$`` (broker-reserved topics),
    has a wildcard or NUL in its text, or a placeholder other than a bare routing attribute.
    """
    if not template:
        raise ValueError("topic must not be empty")
    if template.startswith("$"):
        raise ValueError(f"topic {template!r}: topics starting with '$' are reserved for "
                         "the broker")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"topic {template!r}: {err}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if _FORBIDDEN.intersection(literal):
            raise ValueError(f"topic {template!r}: a topic name must not contain the "
                             "wildcards '+' and '#', nor NUL")
        if name is not None and (name not in TOPIC_PLACEHOLDERS or spec or conversion):
            known = ", ".join(sorted(TOPIC_PLACEHOLDERS))
            raise ValueError(f"topic {template!r}: unknown placeholder {{{name}}}; "
                             f"use {{name}} with one of: {known}")
        parts.append((literal, name))
    return tuple(parts)


class MqttSettings(SinkOptions):
    """An MQTT sink's own settings."""

    host: str = Field(min_length=1, description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (TLS: often 8883).")
    tls: MqttTlsSettings | None = Field(
        default=None, description="TLS settings; TLS is off when absent.")
    username: str | None = Field(default=None, description="User name to log in with.")
    password: SecretStr | None = Field(default=None, description="Password; needs username.")
    client_id: str | None = Field(
        default=None, description="MQTT client id; default nbstream-<sink>-<random>, unique "
        "per connection so several workers of one sink never take over each other's session.")
    topic: str = Field(
        default=DEFAULT_TOPIC, description="Topic template: literal text and {placeholders} "
        "from source_type, object_type, netbox_id, event, object_key, egress_id.")
    qos: Literal[0, 1, 2] = Field(
        default=1, description="QoS of every message; 1 and 2 wait for the broker's "
        "acknowledgement before the batch counts as delivered.")
    retain: bool = Field(
        default=False, description="Publish as retained: the broker keeps the last message "
        "per topic for new subscribers.")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol version: '5' (user properties, reason codes) "
        "or '3.1.1'.")
    keepalive: int = Field(
        default=60, ge=5, le=65535, description="Seconds between keep-alive pings.")
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds allowed for TCP, TLS and CONNACK.")
    ack_timeout: float = Field(
        default=30.0, gt=0, description="Seconds without any acknowledgement from the broker "
        "before the unacknowledged messages count as failed (retryable).")
    max_inflight: int = Field(
        default=100, ge=1, le=_MAX_WINDOW, description="Messages awaiting acknowledgement "
        "at once; lowered to the broker's Receive Maximum (MQTT 5).")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        """Accept ``5`` as YAML writes it (a number) as well as ``"5"``."""
        return str(value) if isinstance(value, int | float) else value

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        """Refuse a template that could not render a valid topic name."""
        parse_topic_template(value)
        return value

    @model_validator(mode="after")
    def _password_needs_username(self) -> MqttSettings:
        """Refuse a password without a user name (MQTT 3.1.1 forbids it)."""
        if self.password is not None and self.username is None:
            raise ValueError("password requires username")
        return self


def _reason_name(packet_type: int, code: int) -> str:
    """Return ``Name (0xNN)`` for an MQTT reason code."""
    try:
        name = str(ReasonCode(packet_type, identifier=code))
    except (KeyError, ValueError):
        name = "unknown reason"
    return f"{name} (0x{code:02X})"


def ack_error(code: int, topic: str) -> RetryableError | PermanentError | None:
    """Return the error a PUBACK/PUBREC reason ``code`` means for one message, or None if it
    was accepted (codes below 0x80, "No matching subscribers" included)."""
    if code < 0x80:
        return None
    message = f"broker refused the message on {topic!r}: {_reason_name(PacketTypes.PUBACK, code)}"
    if code in _RETRYABLE_CODES:
        return RetryableError(message)
    return PermanentError(message)


def batch_failures(
    records: Sequence[SinkRecord], failures: Mapping[int, RetryableError | PermanentError]
) -> dict[int, RetryableError | PermanentError]:
    """Return ``failures`` with, per object, every record after its first retryable failure
    reported with that same error (held back for an ordered retry, even if delivered)."""
    out = dict(failures)
    first_retryable: dict[str, RetryableError] = {}
    for index, record in enumerate(records):
        held_by = first_retryable.get(record.object_key)
        if held_by is not None:
            out[index] = held_by
            continue
        err = out.get(index)
        if isinstance(err, RetryableError):
            first_retryable[record.object_key] = err
    return out


class _Client(Client):
    """paho's client, plus the MQTT 5 PUBREC reason code that paho ignores.

    A broker refusing a QoS 2 message says so in PUBREC only; paho answers PUBREL anyway and
    reports the PUBCOMP that follows as a success, which would make a refused message look
    delivered. This reads the code from the packet paho is handling (packet id, then reason).
    """

    on_pubrec_refused: Callable[[int, int], None] | None = None

    def _handle_pubrec(self) -> MQTTErrorCode:
        """Report a failure reason code, then let paho handle the packet as usual."""
        packet = self._in_packet["packet"]
        hook = self.on_pubrec_refused
        if hook is not None and self._protocol == MQTTv5 and len(packet) > 2 and packet[2] >= 0x80:
            hook(int.from_bytes(packet[:2], "big"), packet[2])
        return super()._handle_pubrec()


class _ConnectFailed(Exception):
    """The broker could not be reached or refused the connection; ``code`` is CONNACK's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class _Connection:
    """One paho client and its network thread, its acknowledgements bridged into asyncio.

    paho calls back on its own thread; everything here but the ``_on_*`` callbacks and
    ``_wake`` runs on the event loop, so the batch state needs no lock.
    """

    def __init__(self, client: _Client, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self.client = client
        self.where = where
        self._loop = loop
        self.connack: asyncio.Future[tuple[ReasonCode, Properties | None]] = loop.create_future()
        self.lost: RetryableError | None = None
        self.receive_maximum = _MAX_WINDOW
        self.maximum_packet_size: int | None = None
        # The current batch: message id -> index of unacknowledged messages, and the reason
        # code each acknowledged index got.
        self.pending: dict[int, int] = {}
        self.codes: dict[int, int] = {}
        # (message id, reason code) from paho's thread, drained on the loop.
        self._acks: deque[tuple[int, int]] = deque()
        self._wake_scheduled = False
        self._waiter: asyncio.Future[None] | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_pubrec_refused = self._on_pubrec_refused

    # -- paho's thread -------------------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop; a closed loop has nobody to tell."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass

    def _on_connect(self, _client: Client, _userdata: Any, _flags: ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        """Hand CONNACK to the loop."""
        self._call(self._connected, reason, properties)

    def _on_disconnect(self, _client: Client, _userdata: Any, flags: DisconnectFlags,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        """Tell the loop the connection ended, and why."""
        if flags.is_disconnect_packet_from_server:
            why = f"the broker closed the connection: {reason}"
        else:
            # paho reports a closed socket as "Unspecified error", which tells nothing.
            why = "connection lost" + (f" ({reason})" if reason.value != 0x80 else "")
        self._call(self._dropped, why)

    def _on_publish(self, _client: Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Properties) -> None:
        """Queue a PUBACK/PUBCOMP (or QoS 0 socket write) for the loop."""
        self._acks.append((mid, reason.value))
        self._wake()

    def _on_pubrec_refused(self, mid: int, code: int) -> None:
        """Queue a refused QoS 2 message for the loop: its outcome is final."""
        self._acks.append((mid, code))
        self._wake()

    def _wake(self) -> None:
        """Schedule one drain for a burst of acknowledgements rather than one per message."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._call(self._drain)

    # -- the event loop ------------------------------------------------------------------

    def _drain(self) -> None:
        """Record the acknowledgements paho's thread queued and wake the waiting batch."""
        # Cleared before draining: an ack appended after this line schedules another drain.
        self._wake_scheduled = False
        while self._acks:
            mid, code = self._acks.popleft()
            index = self.pending.pop(mid, None)
            if index is not None:  # else the PUBCOMP after a refused PUBREC, or stale
                self.codes[index] = code
        self._notify()

    def _connected(self, reason: ReasonCode, properties: Properties | None) -> None:
        """Keep the broker's limits from CONNACK and resolve the connect."""
        if properties is not None:
            self.receive_maximum = getattr(properties, "ReceiveMaximum", _MAX_WINDOW)
            self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
        if not self.connack.done():
            self.connack.set_result((reason, properties))

    def _dropped(self, why: str) -> None:
        """Fail the pending connect, or mark an established connection lost."""
        if not self.connack.done():
            self.connack.set_exception(_ConnectFailed(
                f"MQTT broker {self.where} ended the connection before accepting it: {why}"))
        self.mark_lost(RetryableError(f"MQTT broker {self.where}: {why}"))

    def _notify(self) -> None:
        """Wake the batch waiting in ``wait``."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def mark_lost(self, error: RetryableError) -> None:
        """Record why the connection is unusable (the first reason wins) and wake the batch."""
        if self.lost is None:
            self.lost = error
        self._notify()

    async def wait(self, timeout: float) -> None:
        """Return after the next acknowledgement or loss; mark the connection lost when
        ``timeout`` seconds pass without either."""
        self._waiter = self._loop.create_future()
        try:
            await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            self.mark_lost(RetryableError(
                f"no acknowledgement from MQTT broker {self.where} within {timeout:g}s"))
        finally:
            self._waiter = None

    async def close(self, timeout: float) -> None:
        """Disconnect and stop the network thread (waiting at most ``timeout`` seconds)."""
        self.mark_lost(RetryableError(f"connection to MQTT broker {self.where} was closed"))
        self.client.disconnect()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.client.loop_stop), timeout)
        except TimeoutError:
            pass  # a daemon thread stuck in a socket call must not block shutdown


class MqttSink(Sink[MqttSettings]):
    """Publishes envelopes to an MQTT broker, one message per record."""

    type_name = "mqtt"
    Settings = MqttSettings

    def __init__(self, name: str, settings: MqttSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._topic = parse_topic_template(settings.topic)
        self._v5 = settings.protocol == "5"
        self._where = f"{settings.host}:{settings.port}"
        self._tls: ssl.SSLContext | None = None
        self._conn: _Connection | None = None
        self._opened = False

    def _key(self, field: str) -> str:
        """Return the configuration key of one of this sink's fields."""
        return f"sinks.{self.name}.{field}"

    async def open(self) -> None:
        """Build the TLS context and connect; raise SinkConfigError when the broker is
        unreachable or refuses the connection."""
        if self.settings.tls is not None:
            self._tls = self._tls_context(self.settings.tls)
        try:
            self._conn = await self._connect()
        except _ConnectFailed as err:
            raise SinkConfigError(f"sinks.{self.name}: {err}") from None
        self._opened = True

    def _tls_context(self, tls: MqttTlsSettings) -> ssl.SSLContext:
        """Return the TLS context of the settings; raise SinkConfigError naming the file."""
        try:
            context = ssl.create_default_context(
                cafile=str(tls.ca_file) if tls.ca_file else None)
        except (OSError, ssl.SSLError) as err:
            raise SinkConfigError(f"{self._key('tls.ca_file')}: {err}") from None
        if tls.cert_file is not None:
            try:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as err:
                raise SinkConfigError(f"{self._key('tls.cert_file')}: {err}") from None
        return context

    def _new_client(self) -> _Client:
        """Return an unconnected paho client configured from the settings."""
        s = self.settings
        client_id = s.client_id or f"nbstream-{self.name}-{secrets.token_hex(4)}"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTv5 if self._v5 else MQTTv311,
            clean_session=None if self._v5 else True,
            # A drop fails the batch; the next batch connects afresh (see the module doc).
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout
        # The sink keeps its own window (max_inflight, Receive Maximum); paho sends at once.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password else None)
        if self._tls is not None and s.tls is not None:
            client.tls_set_context(self._tls)
            client.tls_insecure_set(s.tls.insecure)
        return client

    async def _connect(self) -> _Connection:
        """Connect a new client and wait for CONNACK; raise _ConnectFailed."""
        s = self.settings
        conn = _Connection(self._new_client(), asyncio.get_running_loop(), self._where)
        try:
            # TCP connect, TLS handshake and CONNECT block: once per connection, in a thread.
            await asyncio.to_thread(
                conn.client.connect, s.host, s.port, s.keepalive,
                clean_start=True if self._v5 else MQTT_CLEAN_START_FIRST_ONLY)
        except (OSError, ValueError) as err:
            await conn.close(s.connect_timeout)
            raise _ConnectFailed(
                f"cannot connect to MQTT broker {self._where}: {err or type(err).__name__}"
            ) from None
        conn.client.loop_start()
        try:
            reason, _ = await asyncio.wait_for(conn.connack, s.connect_timeout)
        except asyncio.CancelledError:
            conn.client.disconnect()  # the network thread then ends by itself
            raise
        except (TimeoutError, _ConnectFailed) as err:
            await conn.close(s.connect_timeout)
            detail = str(err) if isinstance(err, _ConnectFailed) else (
                f"MQTT broker {self._where} sent no CONNACK within {s.connect_timeout:g}s")
            raise _ConnectFailed(detail) from None
        if reason.is_failure:
            await conn.close(s.connect_timeout)
            code = reason.value
            hint = "; check username and password" if code in (0x86, 0x87) else ""
            raise _ConnectFailed(
                f"MQTT broker {self._where} refused the connection: "
                f"{_reason_name(PacketTypes.CONNACK, code)}{hint}", code)
        return conn

    async def _connection(self) -> _Connection:
        """Return the live connection, reconnecting after a drop; raise the batch's error."""
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if conn is not None:
            self._conn = None
            await conn.close(self.settings.connect_timeout)
        try:
            self._conn = await self._connect()
        except _ConnectFailed as err:
            if err.code in _REFUSED_FOR_GOOD:
                raise PermanentError(str(err)) from None
            raise RetryableError(str(err)) from None
        return self._conn

    async def close(self) -> None:
        """Disconnect from the broker."""
        self._opened = False
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(self.settings.connect_timeout)

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Publish every record and wait for the broker's acknowledgements; raise
        RetryableError when none could be sent, PartialBatchError naming the failed ones."""
        if not records:
            return
        if not self._opened:
            raise RetryableError("mqtt sink is not open")
        conn = await self._connection()
        try:
            failures = await self._publish(conn, records)
        except BaseException:
            # Cancelled mid-batch: which messages the broker has is unknown; start afresh.
            conn.mark_lost(RetryableError("batch abandoned"))
            raise
        failures = batch_failures(records, failures)
        if not failures:
            return
        errors = set(map(id, failures.values()))
        if len(failures) == len(records) and len(errors) == 1:
            raise failures[0]
        raise PartialBatchError(failures)

    async def _publish(
        self, conn: _Connection, records: Sequence[SinkRecord]
    ) -> dict[int, RetryableError | PermanentError]:
        """Publish ``records`` in order within the window; return the failures by index."""
        s = self.settings
        window = min(s.max_inflight, conn.receive_maximum)
        conn.pending.clear()
        conn.codes.clear()
        failures: dict[int, RetryableError | PermanentError] = {}
        topics: dict[int, str] = {}
        publish = conn.client.publish
        for index, record in enumerate(records):
            while len(conn.pending) >= window and conn.lost is None:
                await conn.wait(s.ack_timeout)
            if conn.lost is not None:
                break
            try:
                topic, payload, properties = self._message(record, conn.maximum_packet_size)
                info: MQTTMessageInfo = publish(topic, payload, s.qos, s.retain, properties)
            except PermanentError as err:
                failures[index] = err
                continue
            except ValueError as err:  # paho's own checks; ours should have caught them
                failures[index] = PermanentError(f"cannot publish: {err}")
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # NO_CONN: the connection dropped before paho's thread could tell us.
                conn.mark_lost(RetryableError(
                    f"cannot publish to MQTT broker {self._where}: not connected ({info.rc.name})"
                ))
                break
            conn.pending[info.mid] = index
            topics[index] = topic
        while conn.pending and conn.lost is None:
            await conn.wait(s.ack_timeout)
        for index in range(len(records)):
            if index in failures:
                continue
            code = conn.codes.get(index)
            if code is None:
                # Never acknowledged (or never sent): the loops above end only when the
                # connection is gone, so conn.lost says why.
                failures[index] = conn.lost or RetryableError("not acknowledged")
            else:
                refused = ack_error(code, topics[index])
                if refused is not None:
                    failures[index] = refused
        return failures

    def _message(
        self, record: SinkRecord, maximum_packet_size: int | None
    ) -> tuple[str, bytes, _PackedProperties | None]:
        """Return the topic, body and MQTT 5 properties of ``record``; raise PermanentError."""
        attributes = routing_attributes(record)
        try:
            topic = "".join(
                literal + (attributes[name] if name is not None else "")
                for literal, name in self._topic
            )
        except KeyError as err:
            raise PermanentError(f"topic placeholder {err} has no value") from None
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise PermanentError(
                f"topic {topic!r} of {record.object_key!r} is empty or contains '+', '#' or "
                "NUL; MQTT topic names must not")
        try:
            topic_bytes = len(topic.encode())
            payload = envelope_json(record, self.context.now())
            properties = _PackedProperties(attributes) if self._v5 else None
        except (UnicodeError, OverflowError) as err:
            raise PermanentError(f"cannot encode the message: {err}") from None
        if topic_bytes > _MAX_UTF8:
            raise PermanentError(f"topic of {record.object_key!r} is {topic_bytes} bytes; "
                                 f"MQTT allows {_MAX_UTF8}")
        if properties is not None and any("\0" in v for v in attributes.values()):
            raise PermanentError(f"a routing attribute of {record.object_key!r} contains NUL")
        if maximum_packet_size is not None:
            size = self._packet_size(topic_bytes, payload, properties)
            if size > maximum_packet_size:
                raise PermanentError(
                    f"message of {record.object_key!r} is {size} bytes; MQTT broker "
                    f"{self._where} accepts packets of at most {maximum_packet_size}")
        return topic, payload, properties

    def _packet_size(
        self, topic_bytes: int, payload: bytes, properties: _PackedProperties | None
    ) -> int:
        """Return the size of the PUBLISH packet paho will send."""
        remaining = 2 + topic_bytes + len(payload) + (2 if self.settings.qos else 0)
        if properties is not None:
            remaining += len(properties.pack())
        return 1 + len(_varint(remaining)) + remaining
