"""Burrow-style status rules on synthetic observation windows."""

from __future__ import annotations

import pytest

from nbstream.lag_status import Observation, Status, group_status, partition_status


def window(*points: tuple[int | None, int], members: int = 1) -> list[Observation]:
    """Return observations one second apart from (committed, end) pairs."""
    return [Observation(float(i), c, e, members) for i, (c, e) in enumerate(points)]


@pytest.mark.parametrize(("points", "members", "want"), [
    (((10, 10), (10, 10)), 1, Status.OK),                   # caught up
    (((5, 10), (10, 10), (12, 15)), 1, Status.OK),          # reached zero within the window
    (((5, 10), (9, 20), (15, 30)), 1, Status.WARN),         # moving, lag 5 -> 11 -> 15
    (((5, 10), (5, 12), (5, 12)), 1, Status.STALL),         # members, offset stuck, lag > 0
    (((5, 10), (5, 12)), 0, Status.STOP),                   # nobody consuming, lag > 0
    (((10, 10), (10, 10)), 0, Status.OK),                   # nobody consuming, nothing to do
    (((9, 10), (4, 10)), 1, Status.REWIND),                 # offset went back
    (((5, 30), (15, 30), (25, 30)), 1, Status.OK),          # catching up: lag fell
    (((None, 3), (None, 3)), 1, Status.STALL),              # never committed, lag stays
    (((5, 10),), 1, Status.OK),                             # one observation: no trend yet
])
def test_rules(points: tuple[tuple[int | None, int], ...], members: int, want: Status) -> None:
    """Each rule of the module docstring on a minimal window."""
    assert partition_status(window(*points, members=members)) is want


def test_group_takes_the_worst_partition() -> None:
    """A group is as bad as its worst partition; no partitions is OK."""
    assert group_status([Status.OK, Status.STALL, Status.WARN]) is Status.STALL
    assert group_status([]) is Status.OK
