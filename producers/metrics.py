"""Prometheus metrics of the webhook ingest, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "IngestMetrics"]

# Ingest answers in milliseconds; the upper buckets catch produce timeouts (10 s by default).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class IngestMetrics:
    """Request, produce and event metrics of one ingest app."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "nbstream_ingest_requests", "Webhook requests answered, by HTTP status.",
            ["status"], registry=registry,
        )
        self.request_seconds = Histogram(
            "nbstream_ingest_request_seconds", "Time to answer a webhook request.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.produce_seconds = Histogram(
            "nbstream_ingest_produce_seconds", "Time from produce to the broker's acknowledgement.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.events = Counter(
            "nbstream_ingest_events", "Events accepted onto the raw topic, by event type.",
            ["event_type"], registry=registry,
        )
        # labels() takes a lock and hashes per call; children are cached per label value.
        self._status: dict[int, Counter] = {}
        self._event: dict[str, Counter] = {}

    def answered(self, status: int, seconds: float) -> None:
        """Count one answered webhook request and its duration."""
        child = self._status.get(status)
        if child is None:
            child = self._status[status] = self.requests.labels(str(status))
        child.inc()
        self.request_seconds.observe(seconds)

    def accepted(self, event_type: str) -> None:
        """Count one event stored on the raw topic."""
        child = self._event.get(event_type)
        if child is None:
            child = self._event[event_type] = self.events.labels(event_type)
        child.inc()

    def render(self) -> bytes:
        """Return the Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
