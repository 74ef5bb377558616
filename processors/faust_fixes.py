"""A correction to faust-streaming 0.15, applied once per process by create_app.

It replaces a method of Faust's classes (pinned: faust-streaming <0.16); an upgrade must run
``tests/processors`` and ``tests/faults`` again.

Fetch wait: the aiokafka driver hard-codes ``fetch_max_wait_ms=1500``, and aiokafka keeps one
fetch in flight per broker, so a fetch parked for partitions without new data holds back the
records of the others: the agent's input stalled for 1.25-1.4 s at a time at 1,000 events/s.
100 ms bounds that; an idle consumer fetches every 100 ms instead of 1.5 s.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["FETCH_MAX_WAIT_MS", "apply"]

FETCH_MAX_WAIT_MS = 100


def apply() -> None:
    """Make Faust's worker consumers fetch with FETCH_MAX_WAIT_MS (a second call does nothing)."""
    thread = faust_aiokafka.AIOKafkaConsumerThread
    create = thread._create_worker_consumer
    if getattr(create, "_nbstream", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the Fetcher at start()
        return consumer

    create_worker_consumer._nbstream = True  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
