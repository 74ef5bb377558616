"""The dedup table's windows (processors.dedup): wall-clock tumbling windows, a repeat caught
in the current and the previous window, and old windows dropped by Faust's table cleanup."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from faust.streams import _current_event

from processors.app import create_app
from processors.dedup import Deduplicator
from processors.publisher import Output
from schemas.config import parse_settings

WINDOW = 600.0
# One second before a window boundary, so the next call can land in the next window.
T0 = 2_000_000 * WINDOW - 1.0


class _Clock:
    """A settable clock for the table's windows."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Message:
    def __init__(self) -> None:
        self.partition = 0
        self.topic = "t.events.raw"
        self.timestamp = 0.0
        self.value: bytes | None = None


class _Event:
    """What the table reads as the current event: the raw record's partition."""

    def __init__(self) -> None:
        self.message = _Message()


@pytest.fixture
def dedup(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deduplicator, _Clock]]:
    """A Deduplicator on a real Faust app and table, inside a stream event of partition 0."""
    settings = parse_settings({"kafka": {"bootstrap_servers": "127.0.0.1:1",
                                         "topic_prefix": "t."}, "netbox": {"id": "nb"}}, env={})
    clock = _Clock(T0)
    table = Deduplicator(create_app(settings), WINDOW, 6, clock=clock)
    # Checks the raw topic's partition count against the broker's metadata; no broker here.
    monkeypatch.setattr(table._table, "_verify_source_topic_partitions", lambda topic: None)
    event = _Event()
    token = _current_event.set(weakref.ref(event))
    try:
        yield table, clock
    finally:
        _current_event.reset(token)


def first_time(table: Deduplicator, source_id: str, offset: int) -> tuple[bool, list[Output]]:
    """Return first_time's answer and the changelog records it appended."""
    outputs: list[Output] = []
    return table.first_time(source_id, offset, outputs), outputs


def test_repeat_in_the_same_and_the_next_window_is_dropped(dedup: Any) -> None:
    """A repeat 0.5 s later and one 2 s later, across a window boundary, are duplicates; the
    record that routed the id, read again after a crash, is not its own duplicate."""
    table, clock = dedup
    assert first_time(table, "sid-a", 5)[0] is True
    clock.now = T0 + 0.5
    assert first_time(table, "sid-a", 6) == (False, [])
    clock.now = T0 + 2.0
    assert first_time(table, "sid-a", 7) == (False, [])
    assert first_time(table, "sid-a", 5)[0] is True
    clock.now = T0 + WINDOW - 1.0
    assert first_time(table, "sid-a", 8)[0] is False


def test_repeat_after_two_windows_is_routed(dedup: Any) -> None:
    """The window bounds what is remembered: a repeat two windows later is routed again."""
    table, clock = dedup
    assert first_time(table, "sid-b", 1)[0] is True
    clock.now = T0 + 2 * WINDOW + 1.0
    assert first_time(table, "sid-b", 2)[0] is True


def test_keys_are_clock_windows_and_changelog_records_name_them(dedup: Any) -> None:
    """The changelog record's key is [source_id, [start, end]] of the window holding the
    clock's time, not of 1970; its value is the raw offset + 1."""
    table, clock = dedup
    routed, outputs = first_time(table, "sid-c", 41)
    assert routed is True and len(outputs) == 1
    out = outputs[0]
    assert out.topic == "t.processor-dedup-changelog"
    key = json.loads(out.key)
    assert key[0] == "sid-c"
    start, end = key[1]
    assert start <= T0 < end and end - start < WINDOW
    assert json.loads(out.value) == 42
    assert out.partition == 0


async def test_old_windows_leave_memory_at_the_table_cleanup(dedup: Any) -> None:
    """Faust's cleanup (it compares with the real clock) drops ids from windows older than
    twice the window and keeps recent ones, so memory holds about two windows of ids."""
    table, clock = dedup
    clock.now = time.time() - 3 * WINDOW
    assert first_time(table, "old", 1)[0] is True
    clock.now = time.time()
    assert first_time(table, "new", 2)[0] is True
    await table._table._del_old_keys()
    assert sorted(k[0] for k in table._table.data) == ["new"]


class _Restored:
    """A changelog record as Faust's recovery hands it to the table."""

    def __init__(self, key: list[Any], value: int) -> None:
        self.key = key
        self.value = value
        self.message = _Message()
        self.message.value = json.dumps(value).encode()


async def test_ids_restored_from_the_changelog_expire_too(dedup: Any) -> None:
    """After a restart the restored ids are dropped by the cleanup like live ones, and a
    restored id is still a duplicate while its window lasts."""
    table, clock = dedup
    t = table._table
    now = time.time()
    old, recent = t.window.current(now - 3 * WINDOW), t.window.current(now)
    t.apply_changelog_batch([_Restored(["old", list(old)], 5),
                             _Restored(["recent", list(recent)], 6)])
    assert {k[0] for k in t.data} == {"old", "recent"}
    await t._del_old_keys()
    assert [k[0] for k in t.data] == ["recent"]
    clock.now = now
    assert first_time(table, "recent", 9)[0] is False
