"""The routing agent: decode, match, send one record per sink. Thin glue over rules/routing.

The agent takes the raw stream in batches (``noack_take``): it routes every record of a batch,
publishes all the outputs at once, and acknowledges the batch's records to Faust only when the
broker stored every output. Faust commits acknowledged offsets only, so a crash at any point
leaves uncommitted records to be routed again, never outputs lost. Batches are pipelined: the
next one is routed while earlier ones wait for their acknowledgements, up to ``_MAX_PENDING``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import faust
from faust.streams import _current_event  # what the dedup table reads as current_event()

from processors.channels import Channels
from processors.dedup import Deduplicator
from processors.metrics import ProcessorMetrics
from processors.publisher import Output, Publisher, PublishError
from processors.routing import RecordFactory
from processors.rules import RuleEngine
from schemas.records import NetBoxEvent
from schemas.serde import Serde, SerdeError

__all__ = ["EventRouter", "event_router", "register_router"]

log = logging.getLogger(__name__)

# Batches published but not yet acknowledged; the agent waits for the oldest beyond this.
_MAX_PENDING = 8
# How long a stopping agent waits for its pending batches' acknowledgements.
_STOP_GRACE = 10.0
# A batch this large means the input is busy: before taking the next one, the agent lets the
# fetcher queue a full batch, for up to _FILL_LINGERS batch lingers (see _await_backlog).
_BUSY_BATCH = 50
_FILL_LINGERS = 4


# The per-record step: append the outputs of one raw record (a Faust event) to the batch's.
EventRouter = Callable[[Any, list[Output]], None]


def register_router(
    app: faust.App,
    raw: Any,
    route_event: EventRouter,
    publisher: Publisher,
    batch_size: int = 500,
    batch_linger: float = 0.005,
) -> Any:
    """Define the ``route`` agent on ``app``, reading ``raw``, and return it.

    One agent instance per partition keeps per-object order: records of one key are read,
    routed and published in offset order (one producer, idempotent, so retries keep it), and
    every output keeps the input's key. A batch closes at ``batch_size`` records or
    ``batch_linger`` seconds after the agent asked for it; after a busy batch (``_BUSY_BATCH``
    records or more) the agent first waits up to ``_FILL_LINGERS`` lingers for a full one.
    """

    async def acknowledge(stream: Any, events: list[Any], delivered: asyncio.Future[None]) -> None:
        """Ack ``events`` once their outputs are stored; crash the worker if they cannot be."""
        try:
            await delivered
        except PublishError as err:
            log.error("%s; stopping without committing the batch's %d records (they are "
                      "routed again on restart)", err, len(events))
            await app.crash(err)
            return
        for event in events:
            await stream.ack(event)

    @app.agent(raw, name="route", concurrency=1)
    async def route(stream: Any) -> None:
        pending: deque[asyncio.Task[None]] = deque()
        try:
            async for events in stream.noack_take(batch_size, within=batch_linger):
                outputs: list[Output] = []
                for event in events:
                    # Faust sets the current event for each record it yields; a batch must set it
                    # itself, or the dedup table cannot tell which partition a write belongs to.
                    _current_event.set(weakref.ref(event))
                    route_event(event, outputs)
                _current_event.set(None)
                delivered = await publisher.publish(outputs)
                pending.append(asyncio.ensure_future(acknowledge(stream, events, delivered)))
                while pending and (pending[0].done() or len(pending) > _MAX_PENDING):
                    await pending.popleft()
                if _BUSY_BATCH <= len(events) < batch_size:
                    await _await_backlog(stream.channel.queue, batch_size,
                                         _FILL_LINGERS * batch_linger)
        finally:
            if pending:
                await asyncio.wait(pending, timeout=_STOP_GRACE)

    return route


async def _await_backlog(queue: Any, size: int, timeout: float) -> None:
    """Return once ``queue`` holds ``size`` records, or after ``timeout`` seconds.

    Faust's take closes a batch at its linger even while the fetcher, on the same event loop, is
    still handing records over, so under load batches stayed at ~50 records, and the broker's
    CPU follows the number of batches, not of records: waiting here for a full batch halved the
    broker's CPU and let 9-15 % more events through (docs/performance.md). Only after a busy
    batch, so low rates keep the linger's latency. The queue has no "size reached" signal, so
    this polls it every millisecond.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while queue.qsize() < size and loop.time() < deadline:
        await asyncio.sleep(0.001)


def event_router(
    channels: Channels,
    engine: RuleEngine,
    factory: RecordFactory,
    serde: Serde,
    metrics: ProcessorMetrics,
    dedup: Deduplicator | None = None,
) -> EventRouter:
    """Return nbstream's per-record step: decode, dedup, match, append the sink records (or the
    record itself for the invalid topic)."""
    names = channels.names
    invalid_topic = names.invalid
    sink_topics = {sink: names.sink(sink) for sink in channels.sinks}
    # labels() takes a lock and hashes its arguments per call: a measurable share of the
    # per-event cost at thousands of events/s, so each child is looked up once.
    matched = _Children(metrics.matched)
    routed = _Children(metrics.routed)
    consumed = metrics.consumed

    def route_event(event: Any, outputs: list[Output]) -> None:
        key, value = event.key, event.value
        consumed.inc()
        try:
            nb = NetBoxEvent.from_dict(serde.decode("NetBoxEvent", value))
        except (SerdeError, KeyError, ValueError, TypeError) as err:
            metrics.invalid.inc()
            msg = event.message
            log.warning("undecodable record on %s[%d]@%d: %s", msg.topic, msg.partition,
                        msg.offset, err)
            outputs.append(Output(invalid_topic, key, value, [
                ("nbstream-error", str(err).encode()),
                ("nbstream-original-topic", msg.topic.encode()),
                ("nbstream-original-partition", str(msg.partition).encode()),
                ("nbstream-original-offset", str(msg.offset).encode()),
            ]))
            return
        if dedup is not None and not dedup.first_time(nb.source_id, event.message.offset,
                                                        outputs):
            metrics.duplicates.inc()
            return
        match = engine.match(nb.object_type, nb.event_type, nb.data)
        for rule, _ in match.errors:
            metrics.condition_errors.labels(rule).inc()
        if not match.sinks:
            metrics.unrouted.inc()
            return
        for rule in {r for rules in match.sinks.values() for r in rules}:
            matched[rule].inc()
        for record in factory.records(nb, match):
            routed[record.sink].inc()
            topic = sink_topics[record.sink]
            outputs.append(Output(topic, key, serde.encode("SinkRecord", record.to_dict(), topic), [
                ("nbstream-source-id", record.source_id.encode()),
                ("nbstream-egress-id", record.egress_id.encode()),
            ]))

    return route_event


class _Children(dict[str, Any]):
    """The children of a one-label counter, created on first use of each label value."""

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self._counter = counter

    def __missing__(self, label: str) -> Any:
        child = self[label] = self._counter.labels(label)
        return child
