"""A local AMQP 1.0 peer that plays Azure Service Bus for the unmodified azure-servicebus SDK.

It speaks what the SDK's pure-Python AMQP stack needs to send: SASL ANONYMOUS over plain TCP
(the SDK's ``UseDevelopmentEmulator=true`` mode), the claims-based-security ``put-token``
exchange on the ``$cbs`` node with a *verified* SAS token, and sender links to named entities
(queues and topics alike). Every message it accepts is recorded; batches (message format
0x80013700, one data section per encoded message) are split into their messages.

As Service Bus does, it answers a token for a missing entity with status 404 (so the SDK
fails while opening), a token with a bad signature, key name or expiry with 401, refuses links
to unknown entities with ``amqp:not-found`` and links without a valid token for their entity
with ``amqp:unauthorized-access`` (both on the detach, after echoing the attach), rejects
messages without a session id on a session-enabled entity with ``amqp:not-allowed``, transfers
over the link's maximum message size (announced on the attach; the SDK sizes its batches by
it) with ``amqp:link:message-size-exceeded``, and transfers to a deleted entity with
``amqp:not-found``. Tests script more failures per entity: reject transfers with any AMQP
error condition, or hold them unsettled so the client times out.

The peer runs proton's reactor in a daemon thread. ``stop()`` closes the listener and drops
every socket from inside the reactor (through an event injector), as a crashed service would,
and joins the thread; ``drop_connections()`` closes the connections with
``amqp:connection:forced``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

from proton import (
    Condition,
    Connection,
    Data,
    Delivery,
    Described,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    symbol,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

__all__ = ["AmqpPeer", "PeerFailure", "ReceivedMessage", "split_batch"]

CBS = "$cbs"
_DATA_SECTION = 0x75  # descriptor of an AMQP data section
_LINK_CREDIT = 200


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the peer accepted, with the Service Bus view of its properties."""

    entity: str
    message_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: dict[str, Any]
    session_id: str | None
    body: bytes


@dataclass(slots=True)
class PeerFailure:
    """A scripted failure of transfers to one entity: reject with ``condition``, or hold.

    The first ``after`` transfers still pass; then ``remaining`` transfers fail (None: every
    transfer until cleared).
    """

    condition: str | None
    description: str = "scripted failure"
    remaining: int | None = None
    after: int = 0


def _signature(audience: str, key: str, expiry: int) -> str:
    """Return the base64 HMAC-SHA256 of the url-encoded audience and the expiry."""
    to_sign = f"{quote_plus(audience)}\n{expiry}".encode()
    return base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()


def _entity_of(address: str | None) -> str:
    """Return the entity an address names: ``amqps://host:port/<entity>`` or a bare name."""
    if not address:
        return ""
    if "://" in address:
        return urlsplit(address).path.lstrip("/")
    return address.lstrip("/")


def _error(condition: str, description: str) -> Condition:
    """Return an AMQP error as Service Bus sends it: with an info map (a tracking id).

    The SDK indexes the error's fields positionally and fails on an error without info, which
    proton would otherwise leave out.
    """
    info = {symbol("com.microsoft:tracking-id"): f"peer-{secrets.token_hex(8)}"}
    return Condition(condition, description, info)


def _text(value: Any) -> str | None:
    """Return an AMQP string/symbol/uuid property as text (None stays None)."""
    return None if value is None else str(value)


def split_batch(payload: bytes) -> list[Message]:
    """Return the messages of an encoded transfer: each section of a batch, or the message.

    A batch (message format 0x80013700, which proton does not expose) carries one whole encoded
    message in each data section, so its sections start with a described-type constructor; a
    plain message's data sections hold its body. Proton's own decoder keeps only the last data
    section, so the sections are split here.
    """
    data = Data()
    bodies: list[bytes] = []
    rest = payload
    while rest:
        used = data.decode(rest)
        rest = rest[used:]
        data.rewind()
        data.next()
        section = data.get_object()
        if isinstance(section, Described) and section.descriptor == _DATA_SECTION:
            # Binary values are views into proton's buffer: copy before the next decode.
            bodies.append(bytes(section.value))
        data.clear()
    if bodies and all(b[:2] == b"\x00\x53" for b in bodies):
        out = []
        for body in bodies:
            message = Message()
            message.decode(body)
            out.append(message)
        return out
    message = Message()
    message.decode(payload)
    return [message]


@dataclass
class _ConnState:
    """What the peer knows about one client connection."""

    cbs_reply: Link | None = None
    authorized: set[str] = field(default_factory=set)  # entities with a valid token


class _PeerHandler(Handler):
    """The reactor-side logic of the peer; every method runs on the reactor thread."""

    def __init__(self, peer: AmqpPeer) -> None:
        super().__init__()
        self.peer = peer
        self.acceptor: Any = None
        self.connections: dict[Connection, _ConnState] = {}
        self.held: list[Delivery] = []
        self.tag = 0

    # -- lifecycle ------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        """Listen on the peer's port, and tell the starting thread how that went."""
        try:
            self.acceptor = event.container.listen(f"127.0.0.1:{self.peer.port}")
        except Exception as err:  # noqa: BLE001 - any failure must reach start()
            self.peer._start_error = err
            event.container.stop()
        self.peer._started.set()

    def on_peer_stop(self, event: Event) -> None:
        """Close the listener and drop every socket, as a crashed service would.

        Waiting for clients to answer a close could wait forever: a client whose event loop
        is blocked (by the very test that stops the peer) never reads it.
        """
        if self.acceptor is not None:
            self.acceptor.close()
        for conn in list(self.connections):
            transport = conn.transport
            if transport is None:
                continue
            transport.close_head()
            transport.close_tail()
            selectable = getattr(transport, "_selectable", None)  # proton keeps it private
            if selectable is not None and not selectable.is_terminal:
                selectable.terminate()
                selectable.update()
        self.connections.clear()
        self.peer._injector.close()

    def on_peer_drop(self, event: Event) -> None:
        """Force every client connection closed, as a service restart would."""
        for conn in list(self.connections):
            if not conn.state & Endpoint.LOCAL_CLOSED:
                conn.condition = _error("amqp:connection:forced", "peer dropped the connection")
                conn.close()

    # -- connection, SASL, session ----------------------------------------------------------

    def on_connection_bound(self, event: Event) -> None:
        """Offer SASL ANONYMOUS, which the SDK uses in emulator mode."""
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")
        self.connections[event.connection] = _ConnState()

    def on_connection_remote_open(self, event: Event) -> None:
        """Open the connection the client opened."""
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_connection_remote_close(self, event: Event) -> None:
        """Close our end too."""
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    def on_connection_final(self, event: Event) -> None:
        """Forget the connection."""
        self.connections.pop(event.connection, None)

    def on_transport_closed(self, event: Event) -> None:
        """Release the transport of a closed socket."""
        if event.connection is not None:
            self.connections.pop(event.connection, None)
        event.transport.unbind()

    def on_session_remote_open(self, event: Event) -> None:
        """Open the session the client began."""
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_session_remote_close(self, event: Event) -> None:
        """End our side of the session."""
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    # -- links ------------------------------------------------------------------------------

    def on_link_remote_open(self, event: Event) -> None:
        """Attach the $cbs links and links to known entities; refuse every other link."""
        link: Link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        state = self.connections.setdefault(link.connection, _ConnState())
        if link.is_sender:  # the client receives: only the $cbs reply link is served
            link.source.copy(link.remote_source)
            if _entity_of(link.remote_source.address) == CBS:
                link.target.copy(link.remote_target)
                state.cbs_reply = link
                link.open()
            else:
                self._refuse(link, "amqp:not-implemented", "the test peer does not deliver")
            return
        entity = _entity_of(link.remote_target.address)
        if entity == CBS:
            link.target.copy(link.remote_target)
            link.source.copy(link.remote_source)
            link.open()
            link.flow(_LINK_CREDIT)
            return
        if entity not in self.peer.entities:
            self._refuse(link, "amqp:not-found",
                         f"The messaging entity '{entity}' could not be found.")
            return
        if entity not in state.authorized:
            self._refuse(link, "amqp:unauthorized-access",
                         f"Unauthorized access to '{entity}': no valid token was put.")
            return
        link.target.copy(link.remote_target)
        link.max_message_size = self.peer.max_message_size
        link.open()
        link.flow(_LINK_CREDIT)

    @staticmethod
    def _refuse(link: Link, condition: str, description: str) -> None:
        """Answer the attach and detach at once with ``condition``, as Service Bus does.

        Service Bus echoes the terminus before the detach; a null terminus (AMQP 2.6.3) makes
        the SDK's AMQP stack raise a bare ValueError instead of the detach's error.
        """
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.condition = _error(condition, description)
        link.open()
        link.close()

    def on_link_remote_close(self, event: Event) -> None:
        """Detach our side too."""
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()

    # -- deliveries -------------------------------------------------------------------------

    def on_delivery(self, event: Event) -> None:
        """Handle a complete incoming transfer, or settle a reply the client settled."""
        dlv: Delivery = event.delivery
        link = dlv.link
        if link.is_sender:
            if dlv.remote_state or dlv.remote_settled:
                dlv.settle()
            return
        if not dlv.readable or dlv.partial:
            return
        payload = link.recv(dlv.pending)
        link.advance()
        if link.credit < _LINK_CREDIT // 2:
            link.flow(_LINK_CREDIT - link.credit)
        entity = _entity_of(link.target.address)
        if entity == CBS:
            self._put_token(link.connection, payload, dlv)
        else:
            self._transfer(entity, payload, dlv)

    def _put_token(self, conn: Connection, payload: bytes, dlv: Delivery) -> None:
        """Verify a put-token request and answer it on the $cbs reply link."""
        request = Message()
        request.decode(payload)
        props = request.properties or {}
        audience = str(props.get("name", ""))
        status, description = self.peer._check_token(
            str(props.get("operation", "")), audience, request.body)
        state = self.connections.setdefault(conn, _ConnState())
        if status == 200:
            state.authorized.add(_entity_of(audience))
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        reply = Message(correlation_id=request.id,
                        properties={"status-code": status, "status-description": description})
        if state.cbs_reply is None:
            return
        self.tag += 1
        state.cbs_reply.delivery(str(self.tag))
        state.cbs_reply.send(reply.encode())
        state.cbs_reply.advance()

    def _transfer(self, entity: str, payload: bytes, dlv: Delivery) -> None:
        """Record the messages of one transfer, or fail it as scripted or as the entity must."""
        rejection = self.peer._next_failure(entity)
        if rejection is not None and rejection.condition is None:
            self.held.append(dlv)  # never settled: the client's send times out
            return
        if rejection is None and len(payload) > self.peer.max_message_size:
            rejection = PeerFailure("amqp:link:message-size-exceeded",
                                    f"The message of {len(payload)} bytes exceeds the limit.")
        messages: list[Message] = []
        if rejection is None:
            try:
                messages = split_batch(payload)
            except Exception as err:  # noqa: BLE001 - an undecodable transfer is rejected
                rejection = PeerFailure("amqp:decode-error", str(err))
        if rejection is None and entity in self.peer.session_entities and any(
                m.group_id is None for m in messages):
            rejection = PeerFailure(
                "amqp:not-allowed",
                "The SessionId was not set on a message, and it cannot be sent to the entity.")
        if rejection is not None:
            dlv.local.condition = _error(rejection.condition, rejection.description)
            dlv.update(Delivery.REJECTED)
            dlv.settle()
            self.peer._note_rejected(entity)
            return
        self.peer._record(entity, messages)
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()


class AmqpPeer:
    """A Service Bus stand-in on a free loopback port; see the module docstring."""

    def __init__(
        self,
        entities: Iterable[str] = ("orders",),
        *,
        session_entities: Iterable[str] = (),
        key_name: str = "RootManageSharedAccessKey",
        key: str | None = None,
        max_message_size: int = 256 * 1024,
        port: int | None = None,
    ) -> None:
        self.session_entities = frozenset(session_entities)
        self.entities = frozenset(entities) | self.session_entities
        self.key_name = key_name
        self.key = key or base64.b64encode(secrets.token_bytes(32)).decode()
        self.max_message_size = max_message_size
        self.port = port or _free_port()
        self._lock = threading.Lock()
        self._received: list[ReceivedMessage] = []
        self._failures: dict[str, PeerFailure] = {}
        self._rejected: dict[str, int] = {}
        self._transfers: dict[str, int] = {}
        self._tokens: list[tuple[str, int]] = []
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._injector = EventInjector()
        self._handler = _PeerHandler(self)
        self._container = Container(self._handler)
        self._container.selectable(self._injector)
        self._thread = threading.Thread(target=self._run, name=f"amqp-peer-{self.port}",
                                        daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> AmqpPeer:
        """Start the reactor thread and listen; raise RuntimeError if the peer cannot serve."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"AMQP peer did not start listening on port {self.port}")
        if self._start_error is not None:
            raise RuntimeError(
                f"AMQP peer cannot listen on 127.0.0.1:{self.port}: {self._start_error}")
        return self  # the listening socket was bound before _started was set

    def _run(self) -> None:
        """Run the reactor until stopped."""
        try:
            self._container.run()
        except BaseException as err:  # noqa: BLE001 - reported through start()/stop()
            self._start_error = self._start_error or err
            self._started.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection, stop the reactor and join its thread."""
        if self._thread.is_alive():
            self._injector.trigger(ApplicationEvent("peer_stop"))
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("AMQP peer did not stop")

    def drop_connections(self) -> None:
        """Force every client connection closed (``amqp:connection:forced``)."""
        self._injector.trigger(ApplicationEvent("peer_drop"))

    def __enter__(self) -> AmqpPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests configure and read ------------------------------------------------------

    def connection_string(self, *, key: str | None = None, key_name: str | None = None) -> str:
        """Return the connection string a client uses (plain TCP via the emulator flag)."""
        return (f"Endpoint=sb://127.0.0.1:{self.port};"
                f"SharedAccessKeyName={key_name or self.key_name};"
                f"SharedAccessKey={key or self.key};UseDevelopmentEmulator=true")

    def fail(self, entity: str, condition: str | None, description: str = "scripted failure",
             *, times: int | None = None, after: int = 0) -> None:
        """Fail ``times`` transfers to ``entity`` (all, if None) with ``condition``, letting
        the next ``after`` transfers pass first.

        A None condition holds the transfers unsettled, so the client's send times out.
        """
        with self._lock:
            self._failures[entity] = PeerFailure(condition, description, times, after)

    def delete_entity(self, entity: str) -> None:
        """Remove ``entity``: open links get ``amqp:not-found`` rejections, new tokens 404."""
        with self._lock:
            self.entities = self.entities - {entity}

    def clear(self) -> None:
        """Forget every recorded message, scripted failure and counter."""
        with self._lock:
            self._received.clear()
            self._failures.clear()
            self._rejected.clear()
            self._transfers.clear()
            self._tokens.clear()

    def received(self, entity: str | None = None) -> list[ReceivedMessage]:
        """Return the accepted messages (to ``entity``, or to any), in acceptance order."""
        with self._lock:
            return [m for m in self._received if entity is None or m.entity == entity]

    def transfers(self, entity: str) -> int:
        """Return how many transfers (batches) to ``entity`` were accepted."""
        with self._lock:
            return self._transfers.get(entity, 0)

    def rejected(self, entity: str) -> int:
        """Return how many transfers to ``entity`` were rejected."""
        with self._lock:
            return self._rejected.get(entity, 0)

    def tokens(self) -> list[tuple[str, int]]:
        """Return (audience, status) of every put-token request, in arrival order."""
        with self._lock:
            return list(self._tokens)

    def wait_for(self, entity: str, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Wait until ``count`` messages reached ``entity``; return them (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received(entity)) < count:
            time.sleep(0.05)
        return self.received(entity)

    # -- reactor-thread helpers ---------------------------------------------------------------

    def _check_token(self, operation: str, audience: str, token: Any) -> tuple[int, str]:
        """Return the put-token status: 200 for a valid SAS token for ``audience``, else 4xx."""
        status, description = self._verify(operation, audience, token)
        with self._lock:
            self._tokens.append((audience, status))
        return status, description

    def _verify(self, operation: str, audience: str, token: Any) -> tuple[int, str]:
        """Check the operation, the token's resource, key name, expiry and signature."""
        if operation != "put-token":
            return 400, f"unsupported operation {operation!r}"
        text = token.decode() if isinstance(token, bytes) else str(token or "")
        prefix = "SharedAccessSignature "
        if not text.startswith(prefix):
            return 401, "not a shared access signature"
        fields = {k: v[0] for k, v in parse_qs(text[len(prefix):]).items()}
        try:
            expiry = int(fields["se"])
            resource, sig, key_name = fields["sr"], fields["sig"], fields["skn"]
        except (KeyError, ValueError):
            return 401, "malformed shared access signature"
        if resource != audience:
            return 401, "the token is for another resource"
        entity = _entity_of(urlsplit(audience).path)
        if entity and entity not in self.entities:
            # What Service Bus answers for a token naming a missing queue or topic.
            return 404, f"The messaging entity '{audience}' could not be found."
        if key_name != self.key_name:
            return 401, f"unknown key name {key_name!r}"
        if expiry < time.time():
            return 401, "the token has expired"
        if not hmac.compare_digest(sig, _signature(resource, self.key, expiry)):
            return 401, "InvalidSignature: the token has an invalid signature"
        return 200, "OK"

    def _next_failure(self, entity: str) -> PeerFailure | None:
        """Return the scripted failure for the next transfer to ``entity``, counting it down."""
        with self._lock:
            failure = self._failures.get(entity)
            if failure is None:
                if entity not in self.entities:  # deleted while a link to it was open
                    return PeerFailure("amqp:not-found",
                                       f"The messaging entity '{entity}' could not be found.")
                return None
            if failure.after > 0:
                failure.after -= 1
                return None
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    del self._failures[entity]
            return PeerFailure(failure.condition, failure.description)

    def _note_rejected(self, entity: str) -> None:
        """Count a rejected transfer."""
        with self._lock:
            self._rejected[entity] = self._rejected.get(entity, 0) + 1

    def _record(self, entity: str, messages: list[Message]) -> None:
        """Record the messages of one accepted transfer."""
        got = [
            ReceivedMessage(
                entity=entity,
                message_id=_text(m.id),
                subject=_text(m.subject),
                content_type=_text(m.content_type),
                application_properties={str(k): v for k, v in (m.properties or {}).items()},
                session_id=_text(m.group_id),
                body=_body_bytes(m.body),
            )
            for m in messages
        ]
        with self._lock:
            self._received.extend(got)
            self._transfers[entity] = self._transfers.get(entity, 0) + 1


def _body_bytes(body: Any) -> bytes:
    """Return a message body as bytes (a data section decodes to bytes or memoryview)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise TypeError(f"unexpected message body of type {type(body).__name__}")


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

