"""Which fetched raw records the processor's stream gets: each partition's records once, in
offset order, starting where the last seek put the consumer.

Faust's own bookkeeping for this (faust-streaming 0.15) lost, duplicated and reordered records
around rebalances; ``processors.faust_fixes`` replaces it with this class. Pure logic, no Faust,
so every rule below has a unit test.

- Nothing is handed on for a partition before its first seek since it was assigned: Faust can
  fetch (and, if its flow was never suspended, deliver) records of a new assignment first.
- Every record dropped before it was handed on strands its partition: when the flow resumes,
  the partition is sought back to the expected offset, so the dropped records come again even
  if nothing newer arrives to reveal the gap.
- A seek (to the committed offset, after every rebalance) sets the next expected offset and
  starts a *realignment*: records Faust fetched before the seek can still arrive afterwards, from
  further on. They are dropped, and the first of them triggers one seek back to the expected
  offset, so the records it skipped are fetched again.
- A record the stream would skip (flow suspended or fetched in an older consumer generation) is
  not handed on and does not advance the sequence; if it was the expected one, the partition
  realigns, so it is fetched again.
- A record admitted but cancelled on its way to the stream (Faust drains with a race against
  its flow being suspended), or admitted and then cleared from the stream's buffer (Faust
  clears buffers whenever it resumes the flow, right after its seek) is retracted: expected
  again, as above.
- A record below the expected offset was handed on already: dropped.
- Once aligned, a record past the expected offset means the broker no longer has the offsets in
  between (retention or compaction). It is handed on, and the missing range is remembered so the
  commit can move past it. A committed offset below the partition's first offset at a seek is
  the same case. Either is logged and counted (``on_lost``): the records were never routed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["Sequencer"]

log = logging.getLogger(__name__)


@dataclass
class _Partition:
    expected: int | None = None
    known: bool = False  # sought since it was assigned
    realigning: bool = False
    sought_back: bool = False
    stranded: bool = False  # a record not yet handed on was dropped: the fetch moved past it
    missing: dict[int, int] = field(default_factory=dict)  # first missing offset -> next present

    def realign(self) -> None:
        """Expect ``expected`` again: drop what comes past it, and seek back once if needed."""
        self.realigning, self.sought_back = True, False


class Sequencer:
    """Per-partition sequence of the records handed to the stream."""

    def __init__(self, on_lost: Callable[[int], None] | None = None) -> None:
        self._partitions: dict[Hashable, _Partition] = {}
        self._on_lost = on_lost

    def sought(self, tp: Hashable, committed: int | None, first: int | None) -> None:
        """Record a seek of ``tp`` to ``committed``. None: nothing committed, so the consumer
        reads from ``first``, the partition's first offset on the broker (None: unknown, so
        the first record fetched starts the sequence)."""
        p = self._partitions.setdefault(tp, _Partition())
        p.known = True
        if committed is not None and first is not None and committed < first:
            log.warning("%s: offsets %d-%d were removed by the broker (retention) before the "
                        "processor read them", tp, committed, first - 1)
            p.missing[committed] = first
            self._lost(first - committed)
        p.expected = first if committed is None else max(committed, first or 0)
        p.realign()

    def admit(self, tp: Hashable, offset: int, live: bool) -> tuple[bool, int | None]:
        """Return whether the stream gets the record at ``tp``/``offset``, and an offset to seek
        ``tp`` back to (or None). ``live``: flow active and the record of this generation."""
        p = self._partitions.setdefault(tp, _Partition())
        expected = p.expected
        if not p.known or not live:
            if expected is None or offset >= expected:
                p.stranded = True
                p.realign()
            return False, None
        if expected is None or offset == expected:
            p.expected, p.realigning = offset + 1, False
            return True, None
        if offset < expected:
            return False, None
        if p.realigning:
            if p.sought_back:
                return False, None
            p.sought_back = True
            return False, expected
        log.warning("%s: offsets %d-%d are gone from the broker (retention or compaction); "
                    "continuing at %d", tp, expected, offset - 1, offset)
        p.missing[expected] = offset
        p.expected = offset + 1
        self._lost(offset - expected)
        return True, None

    def _lost(self, count: int) -> None:
        """Count ``count`` offsets the broker removed before they were read."""
        if self._on_lost is not None:
            self._on_lost(count)

    def retract(self, tp: Hashable, offset: int) -> None:
        """The record at ``offset``, admitted, never reached the stream (cancelled on its way,
        or cleared from the stream's buffer): expect it again, fetched anew."""
        p = self._partitions.get(tp)
        if p is not None and p.expected is not None and offset < p.expected:
            p.expected, p.stranded = offset, True
            p.realign()

    def owed_seeks(self) -> dict[Hashable, int]:
        """Return the partitions whose dropped records must be fetched again, with the offset
        to seek each back to; call when the flow resumes, after which records are live. Without
        it a partition that gets no newer record (no traffic) would wait for one."""
        owed = {}
        for tp, p in self._partitions.items():
            if p.known and p.stranded and p.expected is not None:
                owed[tp] = p.expected
                p.stranded, p.sought_back = False, True
        return owed

    def owes(self, tp: Hashable, offset: int) -> bool:
        """Return whether ``tp`` still waits for a seek back to ``offset``: assigned, and
        realigning there (a seek that took effect, or a new one, ends it)."""
        p = self._partitions.get(tp)
        return p is not None and p.known and p.realigning and p.expected == offset

    def commit_base(self, tp: Hashable, committed: int) -> int:
        """Return the offset the next commit of ``tp`` starts from: ``committed``, moved past
        any range the broker no longer has."""
        p = self._partitions.get(tp)
        while p is not None and committed in p.missing:
            committed = p.missing[committed]
        return committed

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop the state of revoked partitions."""
        for tp in tps:
            self._partitions.pop(tp, None)
