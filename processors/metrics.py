"""Prometheus metrics of the rule processor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

__all__ = ["ProcessorMetrics"]


@dataclass(frozen=True)
class ProcessorMetrics:
    """Counters the agent updates; registered on the given registry."""

    consumed: Counter
    matched: Counter
    routed: Counter
    condition_errors: Counter
    invalid: Counter
    unrouted: Counter
    duplicates: Counter
    lost: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, rules: Iterable[str] = (),
               sinks: Iterable[str] = ()) -> ProcessorMetrics:
        """Register the processor's metrics on ``registry``, with a zero series for each of
        ``rules`` and ``sinks`` so dashboards and ``rate()`` see them before the first event."""
        metrics = cls(
            consumed=Counter("nbstream_processor_events_consumed", "Raw events consumed.",
                             registry=registry),
            matched=Counter("nbstream_processor_rule_matched", "Events matched, per rule.",
                            ["rule"], registry=registry),
            routed=Counter("nbstream_processor_routed", "Records routed, per sink.", ["sink"],
                           registry=registry),
            condition_errors=Counter(
                "nbstream_processor_condition_errors",
                "Condition evaluations that raised (treated as no match), per rule.",
                ["rule"], registry=registry),
            invalid=Counter("nbstream_processor_invalid_records",
                            "Undecodable raw records sent to the invalid topic.",
                            registry=registry),
            unrouted=Counter("nbstream_processor_unrouted",
                             "Events that matched no rule.", registry=registry),
            duplicates=Counter("nbstream_processor_duplicates",
                               "Events dropped because their source_id was routed within the "
                               "dedup window.", registry=registry),
            lost=Counter("nbstream_processor_offsets_lost",
                         "Raw offsets the broker removed (retention, compaction) before the "
                         "processor read them: events never routed.", registry=registry),
        )
        for rule in rules:
            metrics.matched.labels(rule)
            metrics.condition_errors.labels(rule)
        for sink in sinks:
            metrics.routed.labels(sink)
        return metrics
