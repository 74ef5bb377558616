"""The routing agent: decode, match, send one record per sink. Thin glue over rules/routing."""

from __future__ import annotations

import logging
from typing import Any

import faust

from processors.channels import Channels
from processors.dedup import Deduplicator
from processors.metrics import ProcessorMetrics
from processors.routing import RecordFactory
from processors.rules import RuleEngine
from schemas.records import NetBoxEvent
from schemas.serde import Serde, SerdeError

__all__ = ["register_router"]

log = logging.getLogger(__name__)


def register_router(
    app: faust.App,
    channels: Channels,
    engine: RuleEngine,
    factory: RecordFactory,
    serde: Serde,
    metrics: ProcessorMetrics,
    dedup: Deduplicator | None = None,
) -> Any:
    """Define the ``route`` agent on ``app`` and return it.

    One agent instance per partition keeps per-object order: records of one key are read,
    matched and sent in offset order, and every output keeps the input's key.
    """
    names = channels.names
    # labels() takes a lock and hashes its arguments per call: a measurable share of the
    # per-event cost at thousands of events/s, so each child is looked up once.
    matched = _Children(metrics.matched)
    routed = _Children(metrics.routed)
    outputs = {sink: (channels.sinks[sink], names.sink(sink)) for sink in channels.sinks}

    @app.agent(channels.raw, name="route", concurrency=1)
    async def route(stream: Any) -> None:
        async for event in stream.events():
            key, value = event.key, event.value
            metrics.consumed.inc()
            try:
                nb = NetBoxEvent.from_dict(serde.decode("NetBoxEvent", value))
            except (SerdeError, KeyError, ValueError, TypeError) as err:
                metrics.invalid.inc()
                msg = event.message
                log.warning("undecodable record on %s[%d]@%d: %s", msg.topic, msg.partition,
                            msg.offset, err)
                await channels.invalid.send(key=key, value=value, headers={
                    "nbstream-error": str(err).encode(),
                    "nbstream-original-topic": msg.topic.encode(),
                    "nbstream-original-partition": str(msg.partition).encode(),
                    "nbstream-original-offset": str(msg.offset).encode(),
                })
                continue
            if dedup is not None and not dedup.first_time(nb.source_id, event.message.offset):
                metrics.duplicates.inc()
                continue
            match = engine.match(nb.object_type, nb.event_type, nb.data)
            for rule, _ in match.errors:
                metrics.condition_errors.labels(rule).inc()
            if not match.sinks:
                metrics.unrouted.inc()
                continue
            for rule in {r for rules in match.sinks.values() for r in rules}:
                matched[rule].inc()
            for record in factory.records(nb, match):
                routed[record.sink].inc()
                channel, topic = outputs[record.sink]
                await channel.send(
                    key=key, value=serde.encode("SinkRecord", record.to_dict(), topic),
                    headers={"nbstream-source-id": record.source_id.encode(),
                             "nbstream-egress-id": record.egress_id.encode()},
                )

    return route


class _Children(dict[str, Any]):
    """The children of a one-label counter, created on first use of each label value."""

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self._counter = counter

    def __missing__(self, label: str) -> Any:
        child = self[label] = self._counter.labels(label)
        return child
