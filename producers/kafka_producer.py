"""Produces records to Kafka from asyncio code and resolves only when the broker acknowledged.

A confluent-kafka ``Producer`` (idempotent, ``acks=all``) is served by one background thread
that calls ``poll()``; each delivery report is handed to the produce call's event loop with
``call_soon_threadsafe``. ``produce`` therefore returns only after the record is stored on every
in-sync replica, and raises ``ProduceError`` for everything else: a delivery error, the
``message.timeout.ms`` deadline, or a full local queue. A fatal idempotence error replaces the
client, so one bad epoch does not leave the process unable to produce until restarted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from schemas.config import Settings
from schemas.topics import Topics

__all__ = [
    "EventProducer",
    "KafkaProducer",
    "ProduceError",
    "RecordTooLargeError",
    "producer_config",
]

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]

# Matches the topics' max.message.bytes (nbstream.admin.TOPIC_CONFIG): records carry the
# object twice (data and message), so the 1 MB default is too small for large objects.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# librdkafka scans for timed-out messages about once a second, so its report can arrive a
# little after message.timeout.ms; the asyncio guard waits this much longer before giving up.
_DEADLINE_GRACE = 2.0
# Errors that are worth retrying although librdkafka does not flag them retriable.
_RETRIABLE_CODES = frozenset({
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._QUEUE_FULL,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError._FATAL,
})
_TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class ProduceError(Exception):
    """The broker did not acknowledge a record; ``retriable`` says whether trying again helps."""

    def __init__(self, message: str, *, retriable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.code = code


class RecordTooLargeError(ProduceError):
    """The record exceeds what the producer or the topic accepts; retrying cannot help."""


def _error(err: KafkaError) -> ProduceError:
    """Return the typed error for a librdkafka error."""
    code = err.code()
    if code in _TOO_LARGE_CODES:
        return RecordTooLargeError(err.str(), retriable=False, code=err.name())
    retriable = bool(err.retriable()) or code in _RETRIABLE_CODES or bool(err.fatal())
    return ProduceError(err.str(), retriable=retriable, code=err.name())


class EventProducer(Protocol):
    """What ingest needs from a producer; tests and embedders may inject their own."""

    async def produce(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> None:
        """Resolve once the broker acknowledged the record; raise ProduceError otherwise."""
        ...

    async def ready(self) -> bool:
        """Return whether records can be produced right now."""
        ...


# Tuning defaults; ``kafka.client`` may override them. linger.ms is 2, not 5: ingest answers
# only after the ack, so each of N concurrent clients waits linger + broker round trip per
# request; on the 2-core reference host 32 clients reached ~4,000 acks/s with 5 ms and
# ~6,000 with 2 ms, at about the same CPU per record (batches still form under load).
_TUNING: dict[str, Any] = {
    "client.id": "nbstream-ingest",
    "linger.ms": 2,
    "compression.type": "lz4",
    "message.max.bytes": MAX_MESSAGE_BYTES,
    # Java clients, Kafka Streams and aiokafka (Faust) place keys with murmur2; the same key
    # lands on the same partition number whichever client wrote it.
    "partitioner": "murmur2_random",
}
# Delivery guarantees (DESIGN §9); the security passthrough cannot weaken them.
_GUARANTEES: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    # Topics are created by nbstream's admin step, never by a metadata request (DESIGN §4).
    "allow.auto.create.topics": False,
}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Return the librdkafka config of the ingest producer, security passthrough included."""
    # Precedence, lowest first: tuning defaults, ``kafka.client`` (TLS/SASL passthrough, or
    # tuning), the produce timeout and the delivery guarantees, then explicit ``overrides``.
    return {
        **_TUNING,
        **settings.kafka.librdkafka(),
        "message.timeout.ms": max(1, int(settings.ingest.produce_timeout * 1000)),
        **_GUARANTEES,
        **overrides,
    }


Report = tuple[asyncio.Future[None], KafkaError | None]


def _settle(reports: list[Report]) -> None:
    """Resolve futures with their delivery reports, on the futures' own event loop."""
    for fut, err in reports:
        if fut.done():  # the asyncio deadline fired first
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(_error(err))


class _DeadlineGuard:
    """Fails the produce futures of one event loop whose delivery report is overdue.

    Every record gets the same deadline, so the futures expire in the order they were produced:
    one queue and one timer per loop replace a timer per record (``asyncio.timeout`` per
    ``produce`` cost a heap push and a cancelled handle per record, measurable at 10k/s).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self._deadline = deadline
        self._queue: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, fut: asyncio.Future[None]) -> None:
        """Fail ``fut`` with a timeout ProduceError unless it is done within the deadline."""
        self._queue.append((self._loop.time() + self._deadline, fut))
        if self._timer is None:
            self._timer = self._loop.call_at(self._queue[0][0], self._expire)

    def _expire(self) -> None:
        """Fail the overdue futures, drop the settled ones, re-arm for the oldest left."""
        self._timer = None
        queue, now = self._queue, self._loop.time()
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            _, fut = queue.popleft()
            if not fut.done():
                fut.set_exception(ProduceError("no delivery report before the produce timeout",
                                               retriable=True, code="_MSG_TIMED_OUT"))
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._expire)


class KafkaProducer:
    """An idempotent, acks=all producer for asyncio callers; running from construction."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        ready_topic: str,
        timeout: float,
        ready_ttl: float = 1.0,
        probe_timeout: float = 2.0,
        poll_interval: float = 0.1,
    ) -> None:
        self._config = {
            **config,
            "error_cb": self._on_error,
            "logger": logging.getLogger("producers.librdkafka"),
        }
        self._producer = Producer(self._config)
        self._retired: list[Any] = []
        # Delivery reports collected during one poll(), handed over in one wake-up per loop.
        self._reports: dict[asyncio.AbstractEventLoop, list[Report]] = {}
        # flush() may serve reports in a caller's thread while the poll thread serves others.
        self._reports_lock = threading.Lock()
        self._fatal = threading.Event()
        self._stop = threading.Event()
        self._deadline = timeout + _DEADLINE_GRACE
        self._ready_topic = ready_topic
        self._ready_ttl = ready_ttl
        self._probe_timeout = probe_timeout
        self._poll_interval = poll_interval
        self._ready_value = False
        self._ready_at = -float("inf")
        self._ready_lock = asyncio.Lock()
        self._guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DeadlineGuard] = (
            weakref.WeakKeyDictionary()
        )
        self._thread = threading.Thread(target=self._serve, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaProducer:
        """Return the producer of the raw topic configured in ``settings``."""
        return cls(
            producer_config(settings),
            ready_topic=Topics(settings.kafka.topic_prefix).raw,
            timeout=settings.ingest.produce_timeout,
        )

    def _on_error(self, err: KafkaError) -> None:
        """Log client-level errors; a fatal one schedules the client's replacement."""
        if err.fatal():
            log.error("kafka producer fatal error", extra={"kafka_error": err.name(),
                                                          "detail": err.str()})
            self._fatal.set()
        else:
            log.warning("kafka producer error", extra={"kafka_error": err.name(),
                                                      "detail": err.str()})

    def _on_delivery(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None],
        err: KafkaError | None, _msg: Any,
    ) -> None:
        """Collect a delivery report (runs inside poll() or flush())."""
        with self._reports_lock:
            reports = self._reports.get(loop)
            if reports is None:
                self._reports[loop] = [(fut, err)]
            else:
                reports.append((fut, err))

    def _hand_over(self) -> None:
        """Pass the collected reports to their event loops, one wake-up per loop."""
        # One call_soon_threadsafe per record would write the loop's wake-up pipe per record;
        # a poll() serves every report that is ready, so batching costs no latency.
        if not self._reports:
            return
        with self._reports_lock:
            reports, self._reports = self._reports, {}
        for loop, batch in reports.items():
            try:
                loop.call_soon_threadsafe(_settle, batch)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _serve(self) -> None:
        """Poll the client so delivery reports fire; drain clients retired after a fatal error."""
        while not self._stop.is_set():
            self._producer.poll(self._poll_interval)
            self._hand_over()
            if self._fatal.is_set():
                self._fatal.clear()
                # In-flight records of the failed client get error reports as it is drained.
                self._retired.append(self._producer)
                self._producer = Producer(self._config)
                log.warning("kafka producer replaced after a fatal error")
            if self._retired:
                for old in self._retired:
                    old.poll(0)
                self._hand_over()
                self._retired = [old for old in self._retired if len(old) > 0]

    async def produce(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> None:
        """Resolve once the broker acked (acks=all); raise ProduceError if it did not in time."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            self._producer.produce(
                topic, value, key, headers=headers,
                on_delivery=partial(self._on_delivery, loop, fut),
            )
        except BufferError as err:
            raise ProduceError(f"local producer queue is full: {err}", retriable=True,
                               code="_QUEUE_FULL") from None
        except KafkaException as err:
            raise _error(err.args[0]) from None
        self._guard(loop).watch(fut)
        await fut

    def _guard(self, loop: asyncio.AbstractEventLoop) -> _DeadlineGuard:
        """Return the deadline guard of ``loop``, creating it on first use."""
        guard = self._guards.get(loop)
        if guard is None:
            guard = self._guards[loop] = _DeadlineGuard(loop, self._deadline)
        return guard

    def _probe(self) -> bool:
        """Return whether a broker answers and the raw topic exists (blocking)."""
        try:
            md = self._producer.list_topics(topic=self._ready_topic, timeout=self._probe_timeout)
        except KafkaException:
            return False
        topic = md.topics.get(self._ready_topic)
        return bool(md.brokers) and topic is not None and topic.error is None

    async def ready(self) -> bool:
        """Return whether the broker is reachable and the raw topic exists (cached ~1 s)."""
        if time.monotonic() - self._ready_at < self._ready_ttl:
            return self._ready_value
        async with self._ready_lock:
            # Concurrent probes share one metadata request.
            if time.monotonic() - self._ready_at >= self._ready_ttl:
                self._ready_value = await asyncio.to_thread(self._probe)
                self._ready_at = time.monotonic()
        return self._ready_value

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding records; return how many are still undelivered."""
        left = int(self._producer.flush(timeout))
        self._hand_over()
        return left

    def close(self, timeout: float = 10.0) -> int:
        """Stop polling, flush outstanding records; return how many were left undelivered."""
        self._stop.set()
        self._thread.join()
        # flush() serves the remaining delivery reports in this thread.
        for old in self._retired:
            old.flush(0)
        left = self.flush(timeout)
        if left:
            log.warning("kafka producer closed with undelivered records", extra={"left": left})
        return left
