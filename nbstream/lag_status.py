"""Burrow-style consumer status from a sliding window of lag observations. Pure; no Kafka.

Rules, per partition, over the observations inside the window (oldest first):

- REWIND: the committed offset went back between two observations.
- STOP:   lag > 0 and the group has no active member in the latest observation (nobody is
          consuming). Kafka's OffsetFetch carries no commit time, so "no commit for longer than
          the window" is decided by membership: a group with members commits, one without
          cannot.
- OK:     lag was 0 in at least one observation of the window.
- STALL:  lag > 0 throughout and the committed offset did not move across the window.
- WARN:   lag > 0 throughout, offsets moved, and lag never fell (each observation's lag is
          >= the one before): the consumer is falling behind.
- OK:     otherwise (lag > 0 but it fell at least once: catching up).

A group's status is its worst partition's (OK < WARN < STALL < STOP < REWIND). A window with
fewer than two observations can only say OK (lag 0), STOP, or OK-by-default.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Observation", "Status", "group_status", "partition_status"]


class Status(enum.IntEnum):
    """Partition and group status, ordered by severity."""

    OK = 0
    WARN = 1
    STALL = 2
    STOP = 3
    REWIND = 4


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at one partition: when, committed and end offsets, and whether anyone consumes."""

    at: float
    committed: int | None
    end: int
    members: int

    @property
    def lag(self) -> int:
        """Messages not yet committed (everything, when nothing was ever committed)."""
        return max(0, self.end - (self.committed if self.committed is not None else 0))


def partition_status(window: Sequence[Observation]) -> Status:
    """Return the status of one partition from its observations, oldest first."""
    if not window:
        return Status.OK
    offsets = [o.committed if o.committed is not None else 0 for o in window]
    if any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
        return Status.REWIND
    last = window[-1]
    if last.lag > 0 and last.members == 0:
        return Status.STOP
    lags = [o.lag for o in window]
    if min(lags) == 0 or len(window) < 2:
        return Status.OK
    if offsets[0] == offsets[-1]:
        return Status.STALL
    if all(b >= a for a, b in zip(lags, lags[1:], strict=False)):
        return Status.WARN
    return Status.OK


def group_status(partitions: Sequence[Status]) -> Status:
    """Return a group's status: its worst partition's."""
    return max(partitions, default=Status.OK)
