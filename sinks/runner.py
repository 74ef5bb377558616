"""The worker of one sink: consume its topic in batches, deliver, retry, dead-letter, store offsets.

Guarantees (DESIGN §9), stated once here:

- **At least once.** An offset is stored only for a record that was delivered, dead-lettered
  to ``netbox.dlq.<sink>`` or (undecodable) copied to ``netbox.events.invalid`` — and for the
  last two only after the broker acknowledged the copy. Offsets are stored only in partition
  order (a record's offset is never stored while an earlier one of its partition is
  unresolved), and auto-commit commits stored offsets only. After a crash the uncommitted
  records are delivered again, with the same ``egress_id``.
- **Per-object order.** Batches are taken in partition order and a batch is fully resolved
  (delivered, dead-lettered or abandoned at shutdown) before the next one starts; a retry sends
  the failed records again in their original order.
- **Backoff.** Retryable failures are retried per the ``RetryPolicy``; while the worker waits
  (or a write runs long) its partitions are paused and the consumer keeps polling, so it stays
  in its group. Permanent failures and exhausted retries go to the dead-letter topic.
- **Shutdown.** ``stop()`` lets the in-flight batch finish within ``shutdown_timeout``, or
  abandons it without storing its unresolved records, then commits the stored offsets and
  closes the consumer (leaving the group).
- **Rebalance.** On revocation the in-flight write of revoked partitions' records gets
  ``revoke_timeout`` to finish (the callback waits for it, the partitions stay assigned
  meanwhile); what it resolved is stored and committed with the rest before the partitions
  go. A write still running then is cancelled and its records of the revoked partitions are
  abandoned uncommitted, for the new owner to deliver again. Either way the worker sends no
  record of a revoked partition after it let the partition go, so the two owners' deliveries
  of one object never interleave.

All consumer calls run on one dedicated thread, one call per batch, so librdkafka's blocking
calls never stall the event loop and rebalance callbacks never race the offset bookkeeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric

from schemas.config import Settings, SinkSettings
from schemas.lag_metrics import LagRow, lag_families
from schemas.records import DeadLetter, SinkRecord
from schemas.serde import Serde, SerdeError, make_serde
from schemas.topics import Topics
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkError,
)
from sinks.registry import create_sink, sink_retry_policy
from sinks.retry import RetryPolicy

__all__ = [
    "H_ERROR",
    "H_OFFSET",
    "H_PARTITION",
    "H_TOPIC",
    "BatchPolicy",
    "SinkMetrics",
    "SinkRunner",
]

T = TypeVar("T")
TP = tuple[str, int]

# How long one idle poll blocks: bounds how late the loop notices stop() when no records come.
_IDLE_POLL = 0.25
# How long a revocation waits for a write it cancelled to end before letting the partitions go.
_CANCEL_GRACE = 5.0
# Headers naming where a dead-lettered or invalid record came from (Kafka Connect's habit).
H_TOPIC, H_PARTITION, H_OFFSET = (
    "nbstream-original-topic",
    "nbstream-original-partition",
    "nbstream-original-offset",
)
H_ERROR = "nbstream-error"
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How many records one ``write_batch`` gets and how long the worker waits to fill it."""

    max_records: int
    linger: float

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> BatchPolicy:
        """Return the policy of a sink's ``batch_size`` and ``batch_linger_ms``."""
        return cls(max_records=settings.batch_size, linger=settings.batch_linger_ms / 1000)


class _LagCollector:
    """Exports per-partition offset lag and time lag of every runner on one registry."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], Iterable[LagRow]]] = {}

    def collect(self) -> Iterable[Metric]:
        """Yield the two consumer-lag gauges, read from the runners at scrape time."""
        return lag_families(row for source in list(self.sources.values()) for row in source())


@dataclass(frozen=True)
class _Families:
    """The metric families of all sinks on one registry (each may be registered only once)."""

    delivered: Counter
    failed: Counter
    retried: Counter
    dead_lettered: Counter
    invalid: Counter
    delivery_seconds: Histogram
    batch_size: Histogram
    lag: _LagCollector

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Families:
        """Register the families on ``registry``."""
        lag = _LagCollector()
        registry.register(lag)
        return cls(
            delivered=Counter("nbstream_sink_delivered", "Records delivered.", ["sink"],
                              registry=registry),
            failed=Counter("nbstream_sink_failed", "Failed delivery attempts per record.",
                           ["sink", "error_class"], registry=registry),
            retried=Counter("nbstream_sink_retried", "Records scheduled for another attempt.",
                            ["sink"], registry=registry),
            dead_lettered=Counter("nbstream_sink_dead_lettered",
                                  "Records written to the dead-letter topic.", ["sink"],
                                  registry=registry),
            invalid=Counter("nbstream_sink_invalid",
                            "Undecodable records copied to the invalid topic.", ["sink"],
                            registry=registry),
            delivery_seconds=Histogram("nbstream_sink_delivery_seconds",
                                       "Duration of one write_batch call.", ["sink"],
                                       registry=registry),
            batch_size=Histogram("nbstream_sink_batch_size", "Records per write_batch call.",
                                 ["sink"], buckets=_BATCH_BUCKETS, registry=registry),
            lag=lag,
        )


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


class SinkMetrics:
    """The Prometheus series of one sink, on a registry that several sinks may share."""

    def __init__(self, registry: CollectorRegistry, sink: str) -> None:
        families = _FAMILIES.get(registry)
        if families is None:
            families = _FAMILIES[registry] = _Families.create(registry)
        self._families = families
        self.sink = sink
        self.delivered = families.delivered.labels(sink)
        self.failed_retryable = families.failed.labels(sink, "retryable")
        self.failed_permanent = families.failed.labels(sink, "permanent")
        self.retried = families.retried.labels(sink)
        self.dead_lettered = families.dead_lettered.labels(sink)
        self.invalid = families.invalid.labels(sink)
        self.delivery_seconds = families.delivery_seconds.labels(sink)
        self.batch_size = families.batch_size.labels(sink)

    def track_lag(self, source: Callable[[], Iterable[LagRow]]) -> None:
        """Export the lag ``source`` reports, until ``untrack_lag``."""
        self._families.lag.sources[self.sink] = source

    def untrack_lag(self) -> None:
        """Stop exporting this sink's lag."""
        self._families.lag.sources.pop(self.sink, None)


class _Abandoned(Exception):
    """The shutdown deadline passed before the in-flight batch was resolved."""


@dataclass(eq=False, slots=True)
class _Item:
    """One consumed message and what became of it."""

    message: Any
    tp: TP
    offset: int
    generation: int
    record: SinkRecord | None = None
    done: bool = False  # delivered, or its dead letter / invalid copy acknowledged
    attempts: int = 0
    first_failure: datetime | None = None
    first_failure_monotonic: float = 0.0
    last_failure: datetime | None = None
    error: SinkError | None = None


@dataclass(slots=True)
class _Outgoing:
    """A record to produce to the dead-letter or invalid topic, and its delivery outcome."""

    item: _Item
    topic: str
    value: bytes | None
    headers: list[tuple[str, bytes]]
    error: KafkaError | None = field(default=None)


def _held_back(items: list[_Item], failures: Mapping[_Item, SinkError]) -> set[_Item]:
    """Return the failed items the sink held back behind an earlier failure of their object."""
    # The contract (sinks.base): a held-back record carries the very error instance of the
    # record of its object that failed before it.
    first_error: dict[str, SinkError] = {}
    held: set[_Item] = set()
    for item in items:
        err = failures.get(item)
        if err is None or item.record is None:
            continue
        key = item.record.object_key
        if first_error.get(key) is err:
            held.add(item)
        else:
            first_error.setdefault(key, err)
    return held


class SinkRunner:
    """Runs one sink: ``await run()`` until ``stop()``; one instance per sink and process."""

    def __init__(
        self,
        name: str,
        sink: Sink[Any],
        settings: Settings,
        *,
        retry: RetryPolicy | None = None,
        batch: BatchPolicy | None = None,
        registry: CollectorRegistry | None = None,
        serde: Serde | None = None,
        shutdown_timeout: float = 10.0,
        revoke_timeout: float | None = None,
        keepalive_interval: float = 1.0,
        stats_interval: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        sink_settings = settings.sinks.get(name)
        if sink_settings is None:
            raise SinkConfigError(f"sinks.{name}: no such sink in the configuration")
        self.name = name
        self.sink = sink
        self._settings = settings
        self._topics = Topics(settings.kafka.topic_prefix)
        self.topic = self._topics.sink(name)
        self._retry = retry if retry is not None else sink_retry_policy(name, sink_settings)
        self._batch = batch if batch is not None else BatchPolicy.from_settings(sink_settings)
        self._serde: Serde = serde if serde is not None else make_serde(
            settings.schema_registry.url, settings.schema_registry.client
        )
        self.metrics = SinkMetrics(registry if registry is not None else CollectorRegistry(), name)
        self._shutdown_timeout = shutdown_timeout
        self._revoke_timeout = shutdown_timeout if revoke_timeout is None else revoke_timeout
        self._keepalive_interval = keepalive_interval
        self._stats_interval = stats_interval
        self._log = logger or logging.getLogger(f"sinks.runner.{name}")
        self._now = sink.context.now

        self._consumer: Any = None
        self._producer: Any = None
        # One thread serialises every consumer call; it starts on the first call.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"nbstream-sink-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._started = False
        # Partition bookkeeping, written by rebalance callbacks on the consumer thread and read
        # on the loop only after the consumer call that ran them has returned — except while a
        # batch is in flight: then _step() and _on_revoke() meet under _step_lock (the loop
        # decides which records a write includes, the callback revokes and waits for writes).
        self._owned: set[TP] = set()
        self._generation: dict[TP, int] = {}
        self._step_lock = threading.Condition()
        self._writing: frozenset[TP] = frozenset()  # partitions of the write in progress
        self._write_task: asyncio.Future[None] | None = None
        self._revoked_write: asyncio.Future[None] | None = None  # a write revocation cancelled
        self._in_flight: list[_Item] = []  # the batch being resolved
        self._paused = False
        self._held: deque[_Item] = deque()
        self._offset_lag: dict[TP, int] = {}
        self._oldest: dict[TP, float] = {}

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        **kwargs: Any,
    ) -> SinkRunner:
        """Return the runner of configured sink ``name``; raise SinkConfigError naming the key.

        ``environ`` is what the webhook ``env`` filter may read (the command layer passes
        ``os.environ``); the sink's retry policy and batch size come from its settings.
        """
        sink_settings = settings.sinks.get(name)
        if sink_settings is None:
            raise SinkConfigError(f"sinks.{name}: no such sink in the configuration")
        log = logger or logging.getLogger(f"sinks.{name}")
        context = SinkContext(environment=settings.environment, sink=name, logger=log)
        if environ is not None:
            context = dataclasses.replace(context, environ=environ)
        sink = create_sink(name, sink_settings, context)
        return cls(name, sink, settings, registry=registry, logger=log, **kwargs)

    # -- life cycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to finish (safe from signal handlers and other threads)."""
        if self._stopping:
            return
        self._stopping = True
        self._deadline = time.monotonic() + self._shutdown_timeout
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)

    async def run(self) -> None:
        """Open the sink and deliver until ``stop()``; raise SinkConfigError on bad start-up."""
        if self._started:
            raise RuntimeError("a SinkRunner runs once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        if self._stopping:
            self._stop_event.set()
        try:
            await self.sink.open()
            try:
                self._producer = Producer(self._producer_config())
                self._consumer = Consumer(self._consumer_config())
            except KafkaException as err:
                raise SinkConfigError(f"kafka.client: {err}") from None
            await self._call(self._check_topics)
            self._consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.metrics.track_lag(self._lag_snapshot)
            self._log.info("sink worker started", extra={"sink": self.name, "topic": self.topic})
            while not self._stopping:
                items = await self._fetch()
                if items and not self._stopping:
                    await self._process(items)
        except _Abandoned:
            self._log.warning("in-flight batch abandoned at shutdown; it will be redelivered",
                              extra={"sink": self.name})
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Commit stored offsets, leave the group, flush the producer and close the sink."""
        self.metrics.untrack_lag()
        try:
            if self._consumer is not None:
                await self._call(self._close_consumer)
                self._consumer = None
            if self._producer is not None:
                await asyncio.to_thread(self._producer.flush, 10.0)
                self._producer = None  # librdkafka's producer is destroyed when collected
        finally:
            try:
                await self.sink.close()
            except Exception:
                self._log.exception("closing sink failed", extra={"sink": self.name})
            self._executor.shutdown(wait=False)
            self._log.info("sink worker stopped", extra={"sink": self.name})

    def _consumer_config(self) -> dict[str, Any]:
        """Return the librdkafka consumer configuration (DESIGN: store after side effect)."""
        # Commit stored offsets every second (librdkafka: 5 s): after a crash, fewer delivered
        # records are delivered again. kafka.client can still override it.
        return {"auto.commit.interval.ms": 1000, **self._settings.kafka.librdkafka(**{
            "group.id": self._topics.sink_group(self.name),
            "client.id": f"nbstream-sink-{self.name}",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "statistics.interval.ms": max(0, int(self._stats_interval * 1000)),
            "stats_cb": self._on_stats,
            "error_cb": self._on_kafka_error,
        })}

    def _producer_config(self) -> dict[str, Any]:
        """Return the idempotent, acks=all producer configuration for dead letters."""
        return self._settings.kafka.librdkafka(**{
            "client.id": f"nbstream-sink-{self.name}-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "error_cb": self._on_kafka_error,
        })

    # -- consumer thread ------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking consumer call on the consumer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _check_topics(self) -> None:
        """Fail fast when the broker is unreachable or a topic the worker needs is missing."""
        try:
            metadata = self._consumer.list_topics(timeout=15)
        except KafkaException as err:
            raise SinkConfigError(
                f"kafka.bootstrap_servers: cannot reach Kafka at {self._settings.kafka.servers}: "
                f"{err}"
            ) from None
        needed = (self.topic, self._topics.dlq(self.name), self._topics.invalid)
        missing = [t for t in needed if t not in metadata.topics]
        if missing:
            raise SinkConfigError(
                f"sinks.{self.name}: topic(s) {', '.join(missing)} do not exist; "
                "create them first ('nbstream topics')"
            )

    def _poll_batch(self, max_records: int, linger: float) -> list[Any]:
        """Block until a record arrives (or briefly), then gather up to a batch within linger."""
        first = self._consumer.poll(_IDLE_POLL)
        if first is None:
            return []
        if max_records <= 1:
            return [first]
        return [first, *self._consumer.consume(max_records - 1, linger)]

    def _pause_and_poll(self) -> list[Any]:
        """Pause the assignment and serve the group protocol without taking new work."""
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
            self._paused = True
        return list(self._consumer.consume(self._batch.max_records, 0))

    def _resume(self) -> None:
        """Resume every assigned partition."""
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)
        self._paused = False

    def _commit_stored(self, consumer: Any) -> None:
        """Commit the stored offsets synchronously; nothing stored is not an error."""
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as err:
            if err.args[0].code() != KafkaError._NO_OFFSET:
                self._log.warning("offset commit failed", extra={"sink": self.name,
                                                                 "error": str(err)})

    def _close_consumer(self) -> None:
        """Commit what is stored, then close (which leaves the group)."""
        self._commit_stored(self._consumer)
        self._consumer.close()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Record newly owned partitions."""
        for tp in partitions:
            self._owned.add((tp.topic, tp.partition))
        self._log.info("partitions assigned", extra={
            "sink": self.name, "partitions": [tp.partition for tp in partitions]})

    def _forget(self, partitions: list[Any]) -> set[TP]:
        """Drop ownership of ``partitions``: no later write includes their records and the
        loop stores none of them; return their keys."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        with self._step_lock:
            for key in keys:
                self._owned.discard(key)
                self._generation[key] = self._generation.get(key, 0) + 1
                self._offset_lag.pop(key, None)
                self._oldest.pop(key, None)
        return keys

    def _settle(self, revoked: set[TP]) -> bool:
        """Wait until no step includes records of ``revoked``: ``revoke_timeout`` for the one
        in progress to end, then cancel its write. Return whether it had to be cancelled."""

        def clear() -> bool:
            return not self._writing & revoked

        with self._step_lock:
            if self._step_lock.wait_for(clear, self._revoke_timeout):
                return False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_write, revoked)
        with self._step_lock:
            if not self._step_lock.wait_for(clear, _CANCEL_GRACE):
                # A sink that ignores cancellation, or a step past its write (dead-lettering
                # waits for the broker's acknowledgement, which no cancellation reaches).
                self._log.error("in-flight step did not end when its write was cancelled; it "
                                "may still act on records of revoked partitions",
                                extra={"sink": self.name})
        return True

    def _cancel_write(self, revoked: set[TP]) -> None:
        """On the loop: cancel the write in progress if it still includes records of
        ``revoked`` (a later write never does)."""
        task = self._write_task
        if task is not None and not task.done() and self._writing & revoked:
            self._revoked_write = task
            task.cancel()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Let the in-flight write of the revoked partitions end within the bound (or cancel
        it), store what it resolved in order, commit every stored offset, and let them go."""
        # Taken before _forget bumps the generations: a batch that outlived an earlier
        # revocation of a partition must not store that ownership's offsets over the commits
        # of the owners since. (_in_flight stays put meanwhile: the loop awaits this call.)
        current = [i for i in self._in_flight if self._current(i)]
        revoked = self._forget(partitions)
        cancelled = self._settle(revoked)
        in_flight = [i for i in current if i.tp in revoked]
        upto = self._resolved(in_flight, lambda _: True)
        self._store_offsets(consumer, upto)
        self._commit_stored(consumer)
        finished = sum(1 for i in in_flight if i.offset < upto.get(i.tp, -1))
        self._log.log(logging.WARNING if cancelled else logging.INFO, "partitions revoked", extra={
            "sink": self.name, "partitions": [tp.partition for tp in partitions],
            "in_flight": len(in_flight), "finished": finished,
            "abandoned": len(in_flight) - finished, "write_cancelled": cancelled})

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Forget partitions lost without a clean revoke (their offsets can't be committed)."""
        self._forget(partitions)
        self._log.warning("partitions lost", extra={
            "sink": self.name, "partitions": [tp.partition for tp in partitions]})

    def _on_stats(self, stats_json: str) -> None:
        """Keep each owned partition's offset lag from librdkafka's statistics."""
        try:
            partitions = json.loads(stats_json)["topics"][self.topic]["partitions"]
        except (KeyError, ValueError):
            return
        for pid, p in partitions.items():
            key = (self.topic, int(pid))
            high = p.get("hi_offset", -1)
            if key not in self._owned or high < 0:
                continue
            committed = p.get("committed_offset", -1)
            # Nothing committed yet: with auto.offset.reset=earliest all retained records lag.
            base = committed if committed >= 0 else max(p.get("lo_offset", 0), 0)
            self._offset_lag[key] = max(high - base, 0)

    def _on_kafka_error(self, err: KafkaError) -> None:
        """Log client-level errors (librdkafka retries them itself unless fatal)."""
        self._log.warning("kafka client error", extra={"sink": self.name, "error": str(err)})

    def _lag_snapshot(self) -> list[LagRow]:
        """Return each owned partition's offset lag and age of its oldest undelivered record."""
        now = time.time()
        oldest = dict(self._oldest)
        group = self._topics.sink_group(self.name)
        out = []
        for topic, partition in list(self._owned):
            ts = oldest.get((topic, partition))
            out.append(LagRow(group, topic, partition, self._offset_lag.get((topic, partition)),
                              max(0.0, now - ts) if ts else 0.0))
        return out

    # -- the loop -------------------------------------------------------------------------

    def _items(self, messages: Iterable[Any]) -> list[_Item]:
        """Wrap consumed messages, logging and skipping consumer error events."""
        items = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    self._log.warning("consumer error", extra={"sink": self.name,
                                                               "error": str(err)})
                continue
            key = (m.topic(), m.partition())
            items.append(_Item(m, key, m.offset(), self._generation.get(key, 0)))
        return items

    async def _fetch(self) -> list[_Item]:
        """Return the next batch: records held back during the last batch first."""
        if self._held:
            n = min(len(self._held), self._batch.max_records)
            return [self._held.popleft() for _ in range(n)]
        messages = await self._call(self._poll_batch, self._batch.max_records, self._batch.linger)
        return self._items(messages)

    def _current(self, item: _Item) -> bool:
        """Return whether ``item``'s partition is still owned since it was fetched."""
        return item.tp in self._owned and self._generation.get(item.tp, 0) == item.generation

    async def _process(self, fetched: list[_Item]) -> None:
        """Resolve one batch completely, then store its offsets."""
        items = [i for i in fetched if self._current(i)]
        if not items:
            return
        for item in items:
            _, ts_ms = item.message.timestamp()
            if ts_ms > 0 and item.tp not in self._oldest:
                self._oldest[item.tp] = ts_ms / 1000
        done = asyncio.Event()
        self._in_flight = items
        keepalive = asyncio.create_task(self._keepalive(done))
        try:
            invalid = self._decode(items)
            if invalid:
                await self._produce_acknowledged(invalid)
            await self._deliver([i for i in items if i.record is not None])
        finally:
            done.set()
            await keepalive
            if self._paused:
                await self._call(self._resume)
            self._in_flight = []
            self._store(items)
            for item in items:
                self._oldest.pop(item.tp, None)

    async def _keepalive(self, done: asyncio.Event) -> None:
        """While a batch is unresolved, keep the consumer in its group with partitions paused."""
        while True:
            try:
                await asyncio.wait_for(done.wait(), self._keepalive_interval)
                return
            except TimeoutError:
                pass
            # Anything returned here comes after the batch in partition order: hold it back.
            self._held.extend(self._items(await self._call(self._pause_and_poll)))

    def _decode(self, items: list[_Item]) -> list[_Outgoing]:
        """Decode each record; return the invalid-topic copies of those that cannot be."""
        invalid = []
        for item in items:
            value = item.message.value()
            try:
                if value is None:
                    raise SerdeError("record has no value")
                item.record = SinkRecord.from_dict(self._serde.decode("SinkRecord", value))
            except (SerdeError, KeyError, ValueError, TypeError) as err:
                reason = f"{type(err).__name__}: {err}"
                self._log.error("undecodable record sent to the invalid topic", extra={
                    "sink": self.name, "partition": item.tp[1], "offset": item.offset,
                    "error": reason})
                self.metrics.invalid.inc()
                headers = [(H_ERROR, reason.encode()), *self._origin(item)]
                invalid.append(_Outgoing(item, self._topics.invalid, value, headers))
        return invalid

    def _origin(self, item: _Item) -> list[tuple[str, bytes]]:
        """Return the headers naming where ``item`` was consumed from."""
        return [
            (H_TOPIC, item.tp[0].encode()),
            (H_PARTITION, str(item.tp[1]).encode()),
            (H_OFFSET, str(item.offset).encode()),
        ]

    async def _deliver(self, items: list[_Item]) -> None:
        """Write ``items`` until each is delivered or dead-lettered; raise _Abandoned.

        Records of partitions revoked meanwhile are left out of every later attempt (their new
        owner delivers them again); see ``_step``.
        """
        pending = items
        while pending:
            with self._step(pending) as pending:
                if not pending:
                    return
                failures, not_attempted = await self._write(pending)
                now_wall, now_mono = self._now(), time.monotonic()
                to_dlq: list[_Item] = []
                retry: list[_Item] = []
                delivered = 0
                for item in pending:
                    err = failures.get(item)
                    if err is None:
                        item.done = True
                        delivered += 1
                        continue
                    if item in not_attempted:
                        retry.append(item)  # held back behind its object's failed record
                        continue
                    item.attempts += 1
                    item.error = err
                    item.last_failure = now_wall
                    if item.first_failure is None:
                        item.first_failure = now_wall
                        item.first_failure_monotonic = now_mono
                    if isinstance(err, PermanentError):
                        self.metrics.failed_permanent.inc()
                        to_dlq.append(item)
                    else:
                        self.metrics.failed_retryable.inc()
                        if self._retry.exhausted(item.attempts, item.first_failure_monotonic,
                                                 now_mono):
                            to_dlq.append(item)
                        else:
                            retry.append(item)
                self.metrics.delivered.inc(delivered)
                if to_dlq:
                    await self._dead_letter(to_dlq)
            if not retry:
                return
            self.metrics.retried.inc(len(retry))
            hints = [e.retry_after for i in retry
                     if isinstance(e := i.error, RetryableError) and e.retry_after is not None]
            tried = [i for i in retry if i.attempts] or retry
            delay = self._retry.delay(
                max(i.attempts for i in tried),
                max(hints) if hints else None,
                now_mono - min(i.first_failure_monotonic or now_mono for i in tried),
            )
            self._log.warning("retrying records", extra={
                "sink": self.name, "records": len(retry), "delay": round(delay, 3),
                "error": str(retry[0].error or failures.get(retry[0]))})
            await self._sleep(delay)
            pending = retry

    @contextmanager
    def _step(self, items: list[_Item]) -> Iterator[list[_Item]]:
        """Yield the ``items`` whose partitions are still owned, and mark those partitions as
        being written until the block ends (a write, its outcome and its dead letters).

        Deciding which records the step includes and revoking partitions happen under one
        lock, so a revocation either comes first (its records are left out) or sees the step
        and waits for it to end (``_on_revoke``).
        """
        with self._step_lock:
            current = [i for i in items if self._current(i)]
            self._writing = frozenset(i.tp for i in current)
        try:
            yield current
        finally:
            with self._step_lock:
                self._writing = frozenset()
                self._step_lock.notify_all()

    async def _write(self, items: list[_Item]) -> tuple[dict[_Item, SinkError], set[_Item]]:
        """Call ``write_batch`` once; return the failures and the held-back items among them."""
        records = [i.record for i in items if i.record is not None]
        started = time.perf_counter()
        task = self._write_task = asyncio.ensure_future(self.sink.write_batch(records))
        try:
            await self._bounded(task)
            return {}, set()
        except asyncio.CancelledError:
            if self._revoked_write is not task:
                raise
            # A revocation outlasted its bound and cancelled the write: which records got
            # through is unknown. Those of revoked partitions are now their new owner's; the
            # others are sent again (attempts are not counted: the destination did not fail).
            abandoned = RetryableError("write abandoned: its partitions were revoked")
            return dict.fromkeys(items, abandoned), set(items)
        except PartialBatchError as err:
            if not all(0 <= i < len(items) for i in err.failed):
                # The sink named a record it was never given, so which ones failed is unknown:
                # treat the batch as undelivered rather than risk skipping a record.
                self._log.error("sink reported out-of-range indices", extra={"sink": self.name})
                unknown = RetryableError(f"malformed partial failure: {err}")
                return dict.fromkeys(items, unknown), set()
            failures: dict[_Item, SinkError] = {items[i]: e for i, e in sorted(err.failed.items())}
            return failures, _held_back(items, failures)
        except (RetryableError, PermanentError) as err:
            return dict.fromkeys(items, err), set()
        except _Abandoned:
            raise
        except Exception as err:
            # A sink bug or an unclassified error: retrying is safe, losing records is not, and
            # the retry bound still dead-letters a record that can never pass.
            self._log.exception("sink raised an unclassified error", extra={"sink": self.name})
            wrapped = RetryableError(f"{type(err).__name__}: {err}")
            return dict.fromkeys(items, wrapped), set()
        finally:
            self._write_task = self._revoked_write = None
            self.metrics.delivery_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(records))

    async def _dead_letter(self, items: list[_Item]) -> None:
        """Write ``items`` to the dead-letter topic and wait for the broker's acknowledgement."""
        dlq = self._topics.dlq(self.name)
        out = []
        for item in items:
            record, error = item.record, item.error
            first, last = item.first_failure, item.last_failure
            if record is None or error is None or first is None or last is None:
                raise RuntimeError("only a decoded record that failed can be dead-lettered")
            letter = DeadLetter(
                record=record,
                error_class="permanent" if isinstance(error, PermanentError) else "retryable",
                error_type=type(error).__name__,
                error_message=str(error),
                attempts=item.attempts,
                first_failure=first,
                last_failure=last,
            )
            value = self._serde.encode("DeadLetter", letter.to_dict(), dlq)
            out.append(_Outgoing(item, dlq, value, self._origin(item)))
            self._log.error("record dead-lettered", extra={
                "sink": self.name, "egress_id": record.egress_id,
                "object_key": record.object_key, "attempts": item.attempts, "error": str(error)})
        await self._produce_acknowledged(out)
        self.metrics.dead_lettered.inc(len(out))

    async def _produce_acknowledged(self, outgoing: list[_Outgoing]) -> None:
        """Produce and flush until the broker acknowledged every record; mark them done."""
        attempt = 0
        while outgoing:
            for o in outgoing:
                o.error = None
                self._produce(o)
            # Flush in slices so a stop() deadline is noticed while the broker is slow.
            while await asyncio.to_thread(self._producer.flush, 1.0):
                if self._stopping and time.monotonic() > self._deadline:
                    raise _Abandoned
            failed = [o for o in outgoing if o.error is not None]
            for o in outgoing:
                if o.error is None:
                    o.item.done = True
            if not failed:
                return
            attempt += 1
            self._log.error("dead-letter/invalid produce failed; retrying", extra={
                "sink": self.name, "records": len(failed), "error": str(failed[0].error)})
            await self._sleep(self._retry.backoff(attempt))
            outgoing = failed

    def _produce(self, o: _Outgoing) -> None:
        """Enqueue one record, noting its delivery error in ``o``."""

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            """Note the broker's verdict on this record."""
            o.error = err

        key = o.item.message.key()
        while True:
            try:
                self._producer.produce(o.topic, value=o.value, key=key, headers=o.headers,
                                       on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let deliveries drain

    def _store(self, items: Sequence[_Item]) -> None:
        """Store, per partition, the offset after the last record resolved in order."""
        self._store_offsets(self._consumer, self._resolved(items, self._current))

    @staticmethod
    def _resolved(items: Iterable[_Item], owned: Callable[[_Item], bool]) -> dict[TP, int]:
        """Return, per partition, the offset after the last of ``items`` resolved in order."""
        upto: dict[TP, int] = {}
        blocked: set[TP] = set()
        for item in items:
            if item.tp in blocked:
                continue
            if item.done and owned(item):
                upto[item.tp] = item.offset + 1
            else:
                blocked.add(item.tp)
        return upto

    def _store_offsets(self, consumer: Any, upto: Mapping[TP, int]) -> None:
        """Store ``upto`` (the next offset per partition) for the next commit."""
        if not upto:
            return
        try:
            consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in upto.items()]
            )
        except KafkaException as err:
            # A partition revoked between the check and the store: its new owner redelivers.
            self._log.warning("storing offsets failed", extra={"sink": self.name,
                                                               "error": str(err)})

    # -- waiting with a shutdown bound ----------------------------------------------------

    async def _bounded(self, coro: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
        """Await ``coro``; once stop() was called, give it until the deadline, then cancel."""
        task = asyncio.ensure_future(coro)
        try:
            if not self._stopping:
                stopper = asyncio.ensure_future(self._stop_event.wait())
                try:
                    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
            if not task.done():
                await asyncio.wait({task}, timeout=max(0.0, self._deadline - time.monotonic()))
        except asyncio.CancelledError:
            task.cancel()  # the worker itself is cancelled: the write must not outlive it
            raise
        if not task.done():
            task.cancel()
            # A sink that ignores cancellation must not hold the shutdown hostage.
            await asyncio.wait({task}, timeout=1.0)
            raise _Abandoned
        return task.result()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds; raise _Abandoned if stop() makes it outlast the deadline."""
        end = time.monotonic() + delay
        if not self._stopping:
            try:
                await asyncio.wait_for(self._stop_event.wait(), delay)
            except TimeoutError:
                return
        if end > self._deadline:
            raise _Abandoned
        await asyncio.sleep(max(0.0, end - time.monotonic()))

