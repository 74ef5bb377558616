"""The commit offset nbstream computes in place of Faust's (processors.faust_fixes): never past
a record the agent did not finish, past a range the broker no longer has; and the consumer's
fetch settings."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport import consumer as faust_consumer

from processors import faust_fixes
from processors.app import create_app
from processors.sequencer import Sequencer
from schemas.config import parse_settings

TP = ("t.events.raw", 0)


def consumer(committed: int | None, acked: list[int]) -> Any:
    """The part of Faust's consumer that its commit-offset method reads."""
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}),
                           _acked_index=defaultdict(set, {TP: set(acked)}),
                           _committed_offset=defaultdict(lambda: None, {TP: committed}),
                           _sequencer=Sequencer())


def test_commits_the_run_of_finished_records_from_the_committed_offset() -> None:
    c = consumer(10, [12, 10, 11, 14])
    assert faust_fixes._new_offset(c, TP) == 13
    assert c._acked[TP] == [14] and c._acked_index[TP] == {14}


def test_never_commits_past_a_record_the_agent_did_not_finish() -> None:
    """Faust 0.15 committed 12 here, past the unfinished record at 10: the event lost in CI."""
    c = consumer(10, [11])
    assert faust_fixes._new_offset(c, TP) is None
    c._acked[TP].append(10)
    assert faust_fixes._new_offset(c, TP) == 12


def test_acknowledgements_below_the_committed_offset_are_dropped() -> None:
    c = consumer(10, [7, 8, 10])
    assert faust_fixes._new_offset(c, TP) == 11
    assert c._acked_index[TP] == set()


def test_commits_past_a_range_the_broker_no_longer_has() -> None:
    c = consumer(5, [])
    c._sequencer.sought(TP, committed=5, first=20)
    assert faust_fixes._new_offset(c, TP) == 20
    c._committed_offset[TP] = 20
    c._acked[TP].extend([20, 21])
    assert faust_fixes._new_offset(c, TP) == 22


def test_nothing_committed_yet_commits_the_first_run() -> None:
    c = consumer(None, [0, 1, 2, 4])
    assert faust_fixes._new_offset(c, TP) == 3


class _Seeks:
    """The consumer's thread, whose seeks fail ``failures`` times first; notes every seek."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[Any, int]] = []

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        self.calls.append(dict(offsets))
        if len(self.calls) <= self.failures:
            raise RuntimeError("broker not reachable")


def stranded() -> Sequencer:
    """A Sequencer owing a seek of TP back to 50 (record 52 came first, 50 never came)."""
    seq = Sequencer()
    seq.sought(TP, committed=50, first=0)
    assert seq.admit(TP, 52, live=True) == (False, 50)
    return seq


async def test_a_failed_seek_back_is_tried_again_without_a_newer_record(monkeypatch: Any) -> None:
    monkeypatch.setattr(faust_fixes, "SEEK_RETRY_DELAY", 0.001)
    thread = _Seeks(failures=2)
    consumer = SimpleNamespace(_thread=thread, _sequencer=stranded())
    await faust_fixes._seek_back(consumer, {TP: 50})
    assert thread.calls == [{TP: 50}] * 3


async def test_a_seek_back_no_longer_owed_is_not_retried(monkeypatch: Any) -> None:
    monkeypatch.setattr(faust_fixes, "SEEK_RETRY_DELAY", 0.001)
    thread = _Seeks(failures=1)
    seq = stranded()
    consumer = SimpleNamespace(_thread=thread, _sequencer=seq)
    seq.forget([TP])  # revoked meanwhile
    await faust_fixes._seek_back(consumer, {TP: 50})
    assert thread.calls == [{TP: 50}]


async def test_a_failed_seek_asked_for_by_a_record_is_tried_again_once_in_the_background(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(faust_fixes, "SEEK_RETRY_DELAY", 0.001)
    thread = _Seeks(failures=1)
    seq = Sequencer()
    seq.sought(TP, committed=50, first=0)
    app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                          flow_control=SimpleNamespace(is_active=lambda: True),
                          consumer_generation_id=1)
    consumer = SimpleNamespace(app=app, flow_active=True, _thread=thread, _sequencer=seq)
    streamed: list[int] = []

    async def to_stream(message: Any) -> None:
        streamed.append(message.offset)

    on_message = faust_fixes._in_sequence(consumer, to_stream)
    for offset in (52, 53):  # the second, past the gap too, does not start another seek
        await on_message(SimpleNamespace(topic=TP[0], tp=TP, offset=offset, generation_id=1))
    await asyncio.gather(*faust_fixes._seeks_under_way)
    assert streamed == [] and thread.calls == [{TP: 50}, {TP: 50}]


class _Committing:
    """A consumer with Faust's own ``commit()`` (one commit at a time; a caller arriving during
    a commit waits for it and returns without committing); ``force_commit`` notes how far the
    acknowledged offsets reached when a commit ran."""

    commit = faust_consumer.Consumer.commit
    maybe_wait_for_commit_to_finish = faust_consumer.Consumer.maybe_wait_for_commit_to_finish

    def __init__(self) -> None:
        self.app = SimpleNamespace(client_only=False)
        self.loop = asyncio.get_running_loop()
        self._commit_fut: asyncio.Future[None] | None = None
        self.acked_up_to = 0
        self.committed: list[int] = []

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        reached = self.acked_up_to
        await asyncio.sleep(0.01)  # the broker round trip
        self.committed.append(reached)
        return True


async def test_revocation_commit_commits_what_was_acknowledged_during_a_timer_commit() -> None:
    consumer = _Committing()
    consumer.acked_up_to = 10
    timer = asyncio.ensure_future(consumer.commit())  # the timer's commit, under way
    await asyncio.sleep(0)
    consumer.acked_up_to = 20  # the agent acknowledged a batch meanwhile
    await faust_fixes.commit_now(consumer)
    await timer
    assert consumer.committed == [10, 20]


async def test_consumer_fetches_with_the_configured_wait_and_min_bytes() -> None:
    """aiokafka's consumer, as Faust's consumer thread builds it, gets processor.fetch_*."""
    settings = parse_settings({
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "t."},
        "netbox": {"id": "nb"},
        "processor": {"fetch_max_wait": 0.04, "fetch_min_bytes": 1234},
    }, env={})
    app = create_app(settings)
    built = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert (built._fetch_max_wait_ms, built._fetch_min_bytes) == (40, 1234)
        defaults = create_app(parse_settings({"kafka": {"bootstrap_servers": "127.0.0.1:1"},
                                              "netbox": {"id": "nb"}}, env={}))
        other = defaults.consumer._thread._create_worker_consumer(defaults.transport)
        assert (other._fetch_max_wait_ms, other._fetch_min_bytes) == (15, 65536)
        await other.stop()
    finally:
        await built.stop()
