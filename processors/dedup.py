"""Drops NetBox events already routed within a window, by source_id (a Faust table).

NetBox requeues a failed webhook with the same body, so the same event can arrive twice (or
via webhook and change log); both carry the same deterministic ``source_id``. The table is a
tumbling window of ``window`` seconds (processing time), checked in the current and the previous
window, so a repeat within at least ``window`` seconds is caught. Its changelog topic lets it
survive restarts and rebalances; windows expire after twice the window.

The table remembers *which* raw record (its offset) carried the source id, and only another
record with the same id is a duplicate. A table write reaches its changelog at once, while the
routed outputs are published only at the next commit: after a crash in between, the restored
table already holds the id of a record whose outputs were never sent, and that record is read
again from the committed offset. It must then be routed again, not dropped as its own duplicate.
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
                      value_type=int,
                      help="source_id -> raw offset + 1 of the record that routed it")
            .tumbling(window, expires=2 * window)
            .relative_to_now()
        )

    def first_time(self, source_id: str, offset: int) -> bool:
        """Return False if a record other than the one at raw ``offset`` carried ``source_id``
        within the window; else remember that this record carries it and return True."""
        # Table keys live in the raw record's partition (one source id, one object key, one
        # partition), so the offset alone names the record; 0 is the table's "never seen".
        marker = offset + 1
        seen = self.table[source_id]
        routed_by = seen.now() or seen.delta(self.window)
        if routed_by and routed_by != marker:
            return False
        self.table[source_id] = marker
        return True
