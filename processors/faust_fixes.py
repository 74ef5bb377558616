"""Corrections to faust-streaming 0.15, applied once per process by create_app.

They replace methods of Faust's classes (pinned: faust-streaming <0.16); an upgrade must run
``tests/processors`` and ``tests/faults`` again.

Fetch wait: the aiokafka driver hard-codes ``fetch_max_wait_ms=1500``, and aiokafka keeps one
fetch in flight per broker, so a fetch parked for partitions without new data holds back the
records of the others: the agent's input stalled for 1.25-1.4 s at a time at 1,000 events/s.
The processor's ``fetch_max_wait`` (15 ms) bounds that. Its ``fetch_min_bytes`` (64 KiB) lets
the broker gather records for that long instead of answering each fetch with the first one:
every fetch costs the consumer thread and the stream a fixed amount, and one per ingest produce
request cost the processor a fifth of its CPU at 1,000 events/s.

Offsets around rebalances (found by tests/faults/test_processor_rebalance.py: it lost an event
in CI, and each cause removed exposed the next as reordered, stalled or re-routed records):

- Faust remembers the last offset it handed to a stream per partition, drops fetched records
  below it and marks offsets above it acknowledged (its "gaps"). Records fetched before a seek
  still arrive after it, so the remembered offset ran ahead of the seek: a processor dropped the
  379 records it had to read again, or acknowledged records it never routed. Here that map is
  always empty, and ``processors.sequencer.Sequencer`` decides which records reach the stream;
  the record callback asks it, and tells it about records that never arrived (cancelled on the
  way, or cleared from a stream's buffer when Faust resumes the flow); when the flow resumes,
  partitions whose records were dropped are sought back (on the consumer's thread) so they are
  fetched again.
- Faust committed a run of acknowledged offsets that started one past the committed offset, so
  a record that was never acknowledged was committed over: the lost event. Here a commit starts
  at the committed offset (or past a range the broker no longer has).
- Faust forgot a revoked partition's acknowledged offsets before its revocation commit, so the
  next owner routed them again; and its revocation commit returned without committing when a
  timer commit was under way. Here the revocation commits everything the agent finished (with a
  commit of its own), then forgets the partition.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, NamedTuple

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.utils.functional import consecutive_numbers
from mode import Service

from processors.sequencer import Sequencer

__all__ = ["apply", "commit_now", "configure"]

log = logging.getLogger(__name__)

class _Options(NamedTuple):
    """What one app's consumer is given beyond Faust's settings."""

    fetch_max_wait_ms: int
    fetch_min_bytes: int
    on_lost: Callable[[int], None] | None


# app -> its consumer's options, set by create_app.
_OPTIONS: weakref.WeakKeyDictionary[Any, _Options] = weakref.WeakKeyDictionary()


def configure(app: Any, *, fetch_max_wait: float, fetch_min_bytes: int,
              on_lost: Callable[[int], None] | None = None) -> None:
    """Set ``app``'s consumer's fetch max wait (seconds) and min bytes, and what counts the raw
    offsets it finds removed by the broker (retention, compaction) before they were read."""
    _OPTIONS[app] = _Options(max(1, round(fetch_max_wait * 1000)), fetch_min_bytes, on_lost)


class _NoReadOffsets(MutableMapping[Any, None]):
    """Faust's read-offset map, never holding one: Faust neither drops nor gap-fills."""

    def __getitem__(self, tp: Any) -> None:
        return None

    def __setitem__(self, tp: Any, offset: Any) -> None:
        pass

    def __delitem__(self, tp: Any) -> None:
        pass

    def __contains__(self, tp: object) -> bool:
        return False

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _in_sequence(consumer: Any, callback: Any) -> Any:
    """Wrap the consumer's record callback so the stream gets what the Sequencer admits."""
    app = consumer.app
    acks_enabled_for = app.topics.acks_enabled_for
    sequencer: Sequencer = consumer._sequencer

    async def on_message(message: Any) -> Any:
        if acks_enabled_for(message.topic):  # the raw topic; not table changelogs
            live = (consumer.flow_active and app.flow_control.is_active()
                    and message.generation_id == app.consumer_generation_id)
            admitted, seek_to = sequencer.admit(message.tp, message.offset, live)
            if seek_to is not None:
                try:
                    await consumer._thread.seek_wait({message.tp: seek_to})
                except Exception as err:  # noqa: BLE001 - retried, see _seek_back
                    log.warning("seek of %s back to %d failed: %s", message.tp, seek_to, err)
                    _start_seek_back(consumer, {message.tp: seek_to}, retry=True)
            if not admitted:
                return None
            try:
                return await callback(message)
            except BaseException:  # e.g. cancelled by the drain loop's race with stop_flow
                sequencer.retract(message.tp, message.offset)
                raise
        return await callback(message)

    return on_message


# Seconds before a failed seek back is tried again (doubling up to _SEEK_RETRY_MAX).
SEEK_RETRY_DELAY = 0.5
_SEEK_RETRY_MAX = 10.0
# Seek tasks under way, kept until done so none is collected.
_seeks_under_way: set[asyncio.Future[None]] = set()


async def _seek_back(consumer: Any, owed: dict[Any, int], retry: bool = False) -> None:
    """Seek the partitions whose dropped records must come again, on the consumer's own thread.

    Faust's ``thread.seek`` runs aiokafka's seek on the caller's thread, where it deletes the
    fetched records that the consumer thread may be iterating at that moment: the fetcher
    crashed with a KeyError (once in 30 runs of the rebalance test). Records that arrive before
    the seek took effect are dropped by the Sequencer, which is realigning these partitions.

    A failed seek is tried again here, with backoff (``retry``: start with the wait), for as
    long as the Sequencer still owes it; the records arriving past the gap meanwhile do not ask
    again (one retrying task per failure, not one per record). Waiting for a newer record to
    ask would leave a partition that gets none with its dropped records unrouted.
    """
    delay = SEEK_RETRY_DELAY
    while owed:
        if retry:
            await asyncio.sleep(delay)
            delay = min(2 * delay, _SEEK_RETRY_MAX)
            owed = {tp: offset for tp, offset in owed.items()
                    if consumer._sequencer.owes(tp, offset)}
            if not owed:
                return
        try:
            await consumer._thread.seek_wait(owed)
            return
        except Exception as err:  # noqa: BLE001 - tried again below
            log.warning("seek of %s back failed: %s; trying again in %.1f s",
                        sorted(map(str, owed)), err, delay)
        retry = True


def _start_seek_back(consumer: Any, owed: dict[Any, int], retry: bool = False) -> None:
    """Run ``_seek_back`` as a task (from sync code, or without holding up the fetch loop)."""
    task = asyncio.ensure_future(_seek_back(consumer, owed, retry))
    _seeks_under_way.add(task)
    task.add_done_callback(_seeks_under_way.discard)


def _retract_on_clear(flow_control: Any, sequencer: Sequencer) -> None:
    """Tell the Sequencer which admitted records Faust drops when it clears the streams'
    buffers (on every suspend and resume of the flow)."""
    clear = flow_control.clear

    def clear_and_retract() -> None:
        for queue in flow_control._queues:
            for item in queue._queue:  # the asyncio.Queue's deque
                message = getattr(item, "message", None)
                if message is not None:
                    sequencer.retract(message.tp, message.offset)
        clear()

    flow_control.clear = clear_and_retract


async def _perform_seek(self: Any) -> None:
    """Seek every assigned partition to its committed offset and tell the Sequencer."""
    committed = await self.seek_to_committed()
    try:
        first = await self.earliest_offsets(*committed)
    except Exception as err:  # noqa: BLE001 - only retention detection depends on it
        log.warning("could not read the partitions' first offsets: %s", err)
        first = {}
    for tp, offset in committed.items():
        offset = offset if offset is not None and offset >= 0 else None
        self._sequencer.sought(tp, offset, first.get(tp))
        if offset is not None:
            self._committed_offset[faust_consumer.ensure_TP(tp)] = offset or None


def _new_offset(self: Any, tp: Any) -> int | None:
    """Return the offset to commit for ``tp``: one past the run of acknowledged offsets that
    starts at the committed offset, or None while that offset is not acknowledged."""
    acked = self._acked[tp]
    acked.sort()
    committed = self._committed_offset[tp]
    if committed is not None:
        base = self._sequencer.commit_base(tp, committed)
        # An event the agent finished after its partition was revoked and assigned again is
        # acknowledged below the committed offset the new assignment sought to.
        below = bisect_left(acked, base)
        self._acked_index[tp].difference_update(acked[:below])
        del acked[:below]
        if not acked or acked[0] != base:
            return base if base != committed else None
    if not acked:
        return None
    batch = next(consecutive_numbers(acked))
    del acked[: len(batch)]
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


async def commit_now(consumer: Any) -> None:
    """Commit what is acknowledged now. Faust's ``commit()``, when another commit is under way
    (the timer's, every ``commit_interval``), waits for it and returns without committing, so
    what the agent acknowledged meanwhile stayed uncommitted: at a revocation, the next owner
    routed it again (52 records in one CI run with the batched agent, whose acknowledgements
    arrive a batch at a time)."""
    while await consumer.maybe_wait_for_commit_to_finish():
        pass  # another commit finished; one more may have started meanwhile
    await consumer.commit()  # no commit under way now, and none can start before this one


async def _on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
    """Let the app commit what the agent finished (it stops the flow, waits for events in
    progress and commits), then forget the revoked partitions."""
    if self._active_partitions is not None:
        self._active_partitions.difference_update(revoked)
    self._paused_partitions.difference_update(revoked)
    await self._on_partitions_revoked(revoked)
    await commit_now(self)
    for tp in revoked:
        for bookkeeping in (self._gap, self._acked, self._acked_index, self._committed_offset):
            bookkeeping.pop(tp, None)
    self._sequencer.forget(revoked)


def apply() -> None:
    """Install the corrections above on Faust's classes (a second call does nothing)."""
    thread = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread._create_worker_consumer, "_nbstream", False):
        return
    create = thread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        options = _OPTIONS.get(self.app)
        if options is not None:  # both are read by the Fetcher at start()
            consumer._fetch_max_wait_ms = options.fetch_max_wait_ms
            consumer._fetch_min_bytes = options.fetch_min_bytes
        return consumer

    consumer_class = faust_consumer.Consumer
    init = consumer_class.__init__

    def consumer_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        options = _OPTIONS.get(self.app)
        self._sequencer = Sequencer(on_lost=options.on_lost if options is not None else None)
        # _drain_messages binds these two when the fetcher starts.
        self._read_offset = _NoReadOffsets()
        self.callback = _in_sequence(self, self.callback)
        _retract_on_clear(self.app.flow_control, self._sequencer)

    resume_flow = consumer_class.resume_flow

    def resume_flow_and_refetch(self: Any) -> None:
        resume_flow(self)
        owed = self._sequencer.owed_seeks()
        if owed:
            _start_seek_back(self, owed)

    create_worker_consumer._nbstream = True  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    consumer_class.__init__ = consumer_init  # type: ignore[method-assign]
    consumer_class.perform_seek = _perform_seek  # type: ignore[method-assign]
    consumer_class.resume_flow = resume_flow_and_refetch  # type: ignore[method-assign]
    consumer_class._new_offset = _new_offset  # type: ignore[method-assign]
    consumer_class.on_partitions_revoked = Service.transitions_to(  # type: ignore[method-assign]
        faust_consumer.CONSUMER_PARTITIONS_REVOKED)(_on_partitions_revoked)
