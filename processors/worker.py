"""Assembles and runs the processor: app, channels, rules, serde, metrics, the route agent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry, start_http_server

from processors.agents import event_router, register_router
from processors.app import create_app
from processors.channels import Channels, kafka_channels
from processors.dedup import Deduplicator
from processors.metrics import ProcessorMetrics
from processors.publisher import KafkaPublisher, Publisher, publisher_config
from processors.routing import RecordFactory
from processors.rules import RuleEngine
from schemas.config import Settings
from schemas.serde import make_serde

__all__ = ["Processor", "build_processor", "run_processor"]

log = logging.getLogger(__name__)

# How long a stopping processor keeps delivering outputs that are already queued.
_FLUSH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Processor:
    """A built processor, ready to run (or to test with ``agent.test_context()``)."""

    app: faust.App
    agent: Any
    channels: Channels
    engine: RuleEngine
    metrics: ProcessorMetrics
    registry: CollectorRegistry
    publisher: Publisher


def build_processor(
    settings: Settings,
    version: str,
    channels: Callable[[faust.App, Settings], Channels] = kafka_channels,
    registry: CollectorRegistry | None = None,
    publisher: Callable[[Settings, Channels], Publisher] | None = None,
    dedup: bool = True,
) -> Processor:
    """Build the app and its agent. ``channels`` and ``publisher`` let tests swap topics for
    in-memory channels; ``dedup=False`` leaves out the dedup table (it needs a broker for its
    changelog)."""
    registry = registry or CollectorRegistry()
    metrics = ProcessorMetrics.create(registry, [r.name for r in settings.rules if r.enabled],
                                      settings.enabled_sinks())
    app = create_app(settings, on_lost=metrics.lost.inc)
    ch = channels(app, settings)
    out = (publisher(settings, ch) if publisher is not None
           else KafkaPublisher(publisher_config(settings)))
    engine = RuleEngine(settings.rules)
    factory = RecordFactory(settings.environment, settings.processor.source_type_docs, version)
    serde = make_serde(settings.schema_registry.url, settings.schema_registry.client)
    window = settings.processor.dedup_window
    table = Deduplicator(app, window, settings.kafka.partitions) if window and dedup else None
    p = settings.processor
    route_event = event_router(ch, engine, factory, serde, metrics, table)
    agent = register_router(app, ch.raw, route_event, out, batch_size=p.batch_size,
                            batch_linger=p.batch_linger)
    return Processor(app, agent, ch, engine, metrics, registry, out)


def run_processor(settings: Settings, version: str, loglevel: str = "warn",
                  registry: CollectorRegistry | None = None) -> None:
    """Run the processor in the foreground until SIGINT/SIGTERM (Faust's Worker handles them).
    ``registry`` may carry collectors of the command layer (the group's consumer lag)."""
    proc = build_processor(settings, version, registry=registry)
    if settings.processor.web_port:
        start_http_server(settings.processor.web_port, addr=settings.ingest.host,
                          registry=proc.registry)
    worker = faust.Worker(proc.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner sets the root logger to DEBUG (so it can spin on every record)
    # and writes escape codes into logs: every debug call of Faust and aiokafka then builds a
    # record that is dropped. Without it the processor spends ~20% less CPU per event.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        proc.publisher.close(timeout=_FLUSH_TIMEOUT)
