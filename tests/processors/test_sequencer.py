"""The Sequencer decides which fetched raw records reach the processor's stream. Each case is
a record stream seen around a rebalance; the assertion is what the stream got, in order."""

from __future__ import annotations

from processors.sequencer import Sequencer

TP = ("t.events.raw", 0)


def feed(seq: Sequencer, offsets: list[int], live: bool = True) -> tuple[list[int], list[int]]:
    """Offer ``offsets`` in turn; return those admitted and the seeks requested."""
    admitted, seeks = [], []
    for offset in offsets:
        ok, seek_to = seq.admit(TP, offset, live)
        if ok:
            admitted.append(offset)
        if seek_to is not None:
            seeks.append(seek_to)
    return admitted, seeks


def test_records_fetched_before_the_seek_are_dropped_and_the_skipped_ones_fetched_again() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=778, first=0)
    # Faust still drains 779-781, fetched before the seek, then the refetch from 778 arrives.
    admitted, seeks = feed(seq, [779, 780, 781])
    assert admitted == [] and seeks == [778]
    admitted, seeks = feed(seq, [778, 779, 780, 781, 782])
    assert admitted == [778, 779, 780, 781, 782] and seeks == []


def test_a_record_read_twice_reaches_the_stream_once() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=10, first=0)
    admitted, _ = feed(seq, [10, 11, 12, 10, 11, 12, 13])
    assert admitted == [10, 11, 12, 13]


def test_a_record_the_stream_would_skip_is_fetched_again() -> None:
    """Drained between the seek and the flow's resumption: not handed on, not counted."""
    seq = Sequencer()
    seq.sought(TP, committed=719, first=0)
    admitted, seeks = feed(seq, list(range(719, 869)), live=False)
    assert admitted == [] and seeks == []
    admitted, seeks = feed(seq, [869, 870])  # the fetch position moved on
    assert admitted == [] and seeks == [719]
    admitted, _ = feed(seq, list(range(719, 871)))
    assert admitted == list(range(719, 871))


def test_once_aligned_a_jump_is_a_range_the_broker_no_longer_has() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=5, first=0)
    admitted, seeks = feed(seq, [5, 6, 20, 21])
    assert admitted == [5, 6, 20, 21] and seeks == []
    assert seq.commit_base(TP, 7) == 20  # the commit may move past 7-19
    assert seq.commit_base(TP, 5) == 5


def test_a_committed_offset_removed_by_retention_starts_at_the_first_offset() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=100, first=400)
    admitted, seeks = feed(seq, [400, 401])
    assert admitted == [400, 401] and seeks == []
    assert seq.commit_base(TP, 100) == 400


def test_nothing_committed_starts_at_the_partitions_first_offset() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=None, first=3)
    admitted, seeks = feed(seq, [4, 5])  # fetched before the seek
    assert admitted == [] and seeks == [3]
    admitted, _ = feed(seq, [3, 4, 5])
    assert admitted == [3, 4, 5]


def test_a_revoked_partition_starts_over_at_its_next_seek() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=0, first=0)
    feed(seq, [0, 1, 2])
    seq.forget([TP])
    seq.sought(TP, committed=1, first=0)
    admitted, _ = feed(seq, [1, 2, 3])
    assert admitted == [1, 2, 3]


def test_a_record_cancelled_on_its_way_to_the_stream_is_fetched_again() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=819, first=0)
    admitted, _ = feed(seq, [819])
    seq.retract(TP, 819)
    admitted, seeks = feed(seq, [820, 821])
    assert admitted == [] and seeks == [819]
    admitted, _ = feed(seq, [819, 820, 821])
    assert admitted == [819, 820, 821]


def test_records_cleared_from_the_streams_buffer_are_fetched_again() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=384, first=0)
    feed(seq, [384, 385, 386, 387])
    for offset in (385, 384, 386):  # the buffer's contents, in any order
        seq.retract(TP, offset)
    admitted, seeks = feed(seq, [388])
    assert admitted == [] and seeks == [384]
    admitted, _ = feed(seq, [384, 385, 386, 387, 388])
    assert admitted == [384, 385, 386, 387, 388]


def test_nothing_reaches_the_stream_before_the_first_seek_of_an_assignment() -> None:
    seq = Sequencer()
    admitted, seeks = feed(seq, [705, 706])  # fetched while the seek to 339 is under way
    assert admitted == [] and seeks == []
    seq.sought(TP, committed=339, first=0)
    admitted, seeks = feed(seq, [707])
    assert admitted == [] and seeks == [339]
    admitted, _ = feed(seq, [339, 340])
    assert admitted == [339, 340]


def test_an_unknown_start_takes_the_first_record_after_the_seek() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=None, first=None)
    admitted, _ = feed(seq, [12, 13])
    assert admitted == [12, 13]


def test_one_seek_back_is_asked_for_per_realignment() -> None:
    """Records past the gap after the first do not ask again while the seek is owed."""
    seq = Sequencer()
    seq.sought(TP, committed=50, first=0)
    admitted, seeks = feed(seq, [52, 53, 54])
    assert admitted == [] and seeks == [50] and seq.owes(TP, 50)


def test_a_seek_back_is_owed_until_the_expected_record_arrives() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=50, first=0)
    _, seeks = feed(seq, [52])
    assert seeks == [50] and seq.owes(TP, 50) and not seq.owes(TP, 51)
    feed(seq, [50])
    assert not seq.owes(TP, 50)
    _, seeks = feed(seq, [53])  # 51-52 gone: a jump once aligned, not a realignment
    assert seeks == [] and not seq.owes(TP, 51)


def test_a_revoked_partition_owes_no_seek() -> None:
    seq = Sequencer()
    seq.sought(TP, committed=50, first=0)
    feed(seq, [52])
    seq.forget([TP])
    assert not seq.owes(TP, 50)


def test_records_dropped_before_the_flow_resumed_are_fetched_again_without_newer_ones() -> None:
    """Two records fetched while the seek was under way, then no traffic: when the flow
    resumes, the partition is sought back; nothing newer has to arrive first."""
    seq = Sequencer()
    feed(seq, [3, 4])  # not yet sought: dropped
    seq.sought(TP, committed=3, first=0)
    assert seq.owed_seeks() == {TP: 3}
    assert seq.owed_seeks() == {}
    admitted, seeks = feed(seq, [3, 4])
    assert admitted == [3, 4] and seeks == []


def test_offsets_removed_by_the_broker_are_counted() -> None:
    """A committed offset below the first one at a seek, and a gap once aligned, are both
    counted as lost, by the number of offsets missing."""
    lost: list[int] = []
    seq = Sequencer(on_lost=lost.append)
    seq.sought(TP, committed=5, first=20)
    assert feed(seq, [20, 21]) == ([20, 21], [])
    assert feed(seq, [25]) == ([25], [])
    assert lost == [15, 3]
