"""Drops NetBox events already routed within a window, by source_id (a Faust table).

NetBox requeues a failed webhook with the same body, so the same event can arrive twice (or
via webhook and change log); both carry the same deterministic ``source_id``. The table is a
tumbling window of ``window`` seconds of wall-clock time, checked in the current and the
previous window, so a repeat within at least ``window`` seconds is caught. Its changelog topic
lets it survive restarts and rebalances; Faust's table cleanup drops windows from memory once
they are twice the window old.

The windows are computed here from the clock. Faust's ``relative_to_now()`` inside a stream
means "the latest window end this partition has seen", which starts at 0 and never advances
past the first window: every key landed in the window of 1970-01-01, and the cleanup, which
compares with the clock, dropped all of them every ``table_cleanup_interval`` (30 s), so a
repeat was caught only until the next cleanup.

The table's changelog records are not sent by Faust's producer but appended to the agent's
batch of outputs (``first_time(..., outputs)``), so they are published with the routed records
by the same idempotent producer and acknowledged with them. Faust's per-record producer path
cost more than the rest of the dedup step on the reference host.

The table remembers *which* raw record (its offset) carried the source id, and only another
record with the same id is a duplicate. A crash after a batch's changelog records reached the
broker but before its input offsets were committed leaves the restored table holding the ids of
records that are read again from the committed offset. They must then be routed again, not
dropped as their own duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import faust

from processors.publisher import Output

__all__ = ["Deduplicator"]


class _BatchedChangelogTable(faust.Table[str, int]):
    """A Faust table whose changelog records go into the agent's current batch of outputs."""

    batch: list[Output]

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> Any:
        """Serialise as Faust would (recovery reads these records back), append to the batch."""
        topic = self.changelog_topic
        k, _ = topic.prepare_key(key, key_serializer or self.key_serializer)
        v, _ = topic.prepare_value(value, value_serializer or self.value_serializer)
        self.batch.append(Output(topic.get_topic_name(), k, v, [],
                                 -1 if partition is None else partition))
        # Faust's on_key_set reads the partition from the returned future's message.
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Restore ids as Faust does, and register them for the table cleanup.

        Faust's recovery fills the store but not the expiry bookkeeping, so restored ids would
        stay in memory for the life of the process.
        """
        events = list(batch)
        super().apply_changelog_batch(events)
        for event in events:
            if event.message.value is not None:
                self._maybe_set_key_ttl(self._to_key(event.key), event.message.partition)


class Deduplicator:
    """Remembers the source ids the agent has routed; call ``first_time`` inside the stream."""

    def __init__(self, app: faust.App, window: float, partitions: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        # What app.Table() does, with the subclass (Faust's types do not allow int values).
        types: dict[str, Any] = {"key_type": str, "value_type": int}
        self._table = _BatchedChangelogTable(
            app, name="dedup", default=int, partitions=partitions, beacon=app.tables.beacon,
            help="source_id -> raw offset + 1 of the record that routed it", **types)
        app.tables.add(self._table)
        # Sets the table's window and expiry; the wrapper it returns is not used (first_time
        # computes the windows from the clock).
        self._table.tumbling(window, expires=2 * window)

    def first_time(self, source_id: str, offset: int, outputs: list[Output]) -> bool:
        """Return False if a record other than the one at raw ``offset`` carried ``source_id``
        within the window; else remember that this record carries it (its changelog record is
        appended to ``outputs``) and return True."""
        # Table keys live in the raw record's partition (one source id, one object key, one
        # partition), so the offset alone names the record; 0 is the table's "never seen".
        marker = offset + 1
        # Keys are (source_id, window range), as Faust's windowed tables write them; the window
        # comes from the clock (not from Faust's WindowSet, whose now() and delta() read the
        # partition's latest window end and the record's timestamp). The write goes through the
        # table, which sends the changelog record and keeps the expiry bookkeeping.
        table: Any = self._table
        window, now = table.window, self._clock()
        key = (source_id, window.current(now))
        data = table.data
        routed_by = data.get(key) or data.get((source_id, window.delta(now, self.window)))
        if routed_by and routed_by != marker:
            return False
        table.batch = outputs
        table[key] = marker
        return True
