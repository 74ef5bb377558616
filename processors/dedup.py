"""Drops NetBox events already routed within a window, by source_id (a Faust table).

NetBox requeues a failed webhook with the same body, so the same event can arrive twice (or
via webhook and change log); both carry the same deterministic ``source_id``. The table is a
tumbling window of ``window`` seconds (processing time), checked in the current and the previous
window, so a repeat within at least ``window`` seconds is caught. Its changelog topic lets it
survive restarts and rebalances; windows expire after twice the window.
"""

from __future__ import annotations

from typing import Any

import faust

__all__ = ["Deduplicator"]


class Deduplicator:
    """Remembers the source ids the agent has routed; call ``first_time`` inside the stream."""

    def __init__(self, app: faust.App, window: float, partitions: int) -> None:
        self.window = window
        self.table: Any = (
            app.Table("dedup", default=int, partitions=partitions, key_type=str,
                      value_type=int, help="source_id -> 1 when routed within the window")
            .tumbling(window, expires=2 * window)
            .relative_to_now()
        )

    def first_time(self, source_id: str) -> bool:
        """Return True and remember ``source_id`` unless it was seen within the window."""
        seen = self.table[source_id]
        if seen.now() or seen.delta(self.window):
            return False
        self.table[source_id] = 1
        return True
