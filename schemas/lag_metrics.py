"""The consumer-lag gauges every consuming process exports, named and labelled in one place.

Sink workers fill them from their own bookkeeping (the oldest record not yet delivered); the
processor from the cluster (its group's committed offsets and the record at each). Both yield
the same two families so one Grafana panel or alert rule covers every group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily

__all__ = ["LagRow", "lag_families"]

_LABELS = ["group", "topic", "partition"]


@dataclass(frozen=True, slots=True)
class LagRow:
    """One partition's lag: messages (None when not known yet) and seconds."""

    group: str
    topic: str
    partition: int
    messages: int | None
    seconds: float


def lag_families(rows: Iterable[LagRow]) -> list[GaugeMetricFamily]:
    """Return the two lag gauge families holding ``rows``."""
    messages = GaugeMetricFamily(
        "nbstream_consumer_lag_messages",
        "Log end offset minus the group's committed offset, per partition.", labels=_LABELS)
    seconds = GaugeMetricFamily(
        "nbstream_consumer_lag_seconds",
        "Now minus the timestamp of the oldest record the group has not yet finished, read "
        "from that record (keeps growing while producers are idle); 0 when caught up.",
        labels=_LABELS)
    for r in rows:
        labels = [r.group, r.topic, str(r.partition)]
        if r.messages is not None:
            messages.add_metric(labels, r.messages)
        seconds.add_metric(labels, r.seconds)
    return [messages, seconds]
