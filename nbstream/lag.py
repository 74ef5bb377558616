"""``nbstream lag``: offset and time lag of every nbstream consumer group, with a status.

Groups: each enabled sink's workers (on ``<prefix>sink.<name>``) and the processor (on the raw
topic). Per partition: committed offset, end offset, lag in messages, and lag in seconds =
now minus the timestamp of the oldest record not yet committed, read from that record itself,
so it keeps growing while producers are idle (0 when caught up). Status: nbstream.lag_status.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.core import Metric

from nbstream.lag_status import Observation, Status, group_status, partition_status
from schemas.config import Settings
from schemas.lag_metrics import LagRow, lag_families
from schemas.topics import Topics

__all__ = ["Group", "GroupLagCollector", "LagReader", "PartitionLag", "groups_of", "run_lag"]

log = logging.getLogger(__name__)

_COORDINATOR_MOVING = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
})


@dataclass(frozen=True, slots=True)
class Group:
    """An nbstream consumer group and the topic it consumes."""

    name: str
    topic: str
    role: str
    sink: str | None = None  # the sink's name, for a sink's group


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's lag at one moment."""

    group: str
    topic: str
    partition: int
    observation: Observation
    lag_seconds: float

    @property
    def lag(self) -> int:
        """Lag in messages."""
        return self.observation.lag


def groups_of(settings: Settings) -> list[Group]:
    """Return the processor's group and one group per enabled sink."""
    t = Topics(settings.kafka.topic_prefix)
    out = [Group(t.processor_group(), t.raw, "processor")]
    out += [Group(t.sink_group(n), t.sink(n), f"sink {n}", n)
            for n in settings.enabled_sinks()]
    return out


class LagReader:
    """Reads committed offsets, end offsets, membership and oldest-record timestamps.

    Each observation of a group uses one consumer carrying that group's id: it fetches the
    committed offsets, watermarks and records by assignment, never subscribes (so it never
    joins the group) and never commits.
    """

    def __init__(self, settings: Settings) -> None:
        self._conf = settings.kafka.librdkafka()
        self._admin: AdminClient | None = AdminClient(self._conf)

    def close(self) -> None:
        """Release the admin client now rather than at interpreter exit."""
        self._admin = None

    def _members(self, group: str) -> int:
        """Return how many members the group has now (0 when empty, dead or unknown)."""
        if self._admin is None:
            raise RuntimeError("LagReader is closed")
        try:
            desc = self._admin.describe_consumer_groups([group])[group].result(timeout=10)
        except Exception:  # noqa: BLE001 - an unknown group has no members
            return 0
        return len(desc.members)

    @staticmethod
    def _committed(consumer: Consumer, topic: str, partitions: list[int]
                   ) -> dict[int, int | None]:
        """Return partition -> committed offset (None when never committed)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                tps = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                         timeout=10)
                break
            except KafkaException as err:
                # On a young broker the coordinator may still be elected or loading
                # __consumer_offsets: transient, though librdkafka does not flag all as retriable.
                code = err.args[0].code()
                if (not (err.args[0].retriable() or code in _COORDINATOR_MOVING)
                        or time.monotonic() > deadline):
                    raise
                time.sleep(0.5)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in tps}

    @staticmethod
    def _oldest_timestamps(consumer: Consumer, wanted: dict[int, int], topic: str
                           ) -> dict[int, float]:
        """Return partition -> timestamp (s) of the record at each given offset."""
        if not wanted:
            return {}
        consumer.assign([TopicPartition(topic, p, off) for p, off in wanted.items()])
        found: dict[int, float] = {}
        deadline = time.monotonic() + 5
        while len(found) < len(wanted) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            p = msg.partition()
            if p is not None and p not in found:
                found[p] = msg.timestamp()[1] / 1000.0
        return found

    @staticmethod
    def _partitions(consumer: Consumer, topic: str) -> list[int]:
        """Return ``topic``'s partitions (none when the topic does not exist)."""
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        return [] if meta is None or meta.error is not None else sorted(meta.partitions)

    def written(self, topic: str) -> int:
        """Return how many records were ever written to ``topic`` (its end offsets' sum)."""
        consumer = Consumer({**self._conf, "group.id": "nbstream-lag-reader",
                             "enable.auto.commit": False})
        try:
            return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in self._partitions(consumer, topic))
        finally:
            consumer.close()

    def observe(self, group: Group) -> list[PartitionLag]:
        """Return one observation of every partition of ``group``'s topic."""
        consumer = Consumer({**self._conf, "group.id": group.name, "enable.auto.commit": False,
                             "enable.auto.offset.store": False})
        try:
            partitions = self._partitions(consumer, group.topic)
            if not partitions:
                return []
            committed = self._committed(consumer, group.topic, partitions)
            members = self._members(group.name)
            now = time.time()
            rows: dict[int, Observation] = {}
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(group.topic, p),
                                                           timeout=10)
                c = committed.get(p)
                # Records below the log start were deleted by retention: they cannot lag.
                rows[p] = Observation(now, max(c, low) if c is not None else None, high,
                                      members)
            starts = {p: (o.committed if o.committed is not None else 0)
                      for p, o in rows.items() if o.lag > 0}
            stamps = self._oldest_timestamps(consumer, starts, group.topic)
        finally:
            consumer.close()
        return [PartitionLag(group.name, group.topic, p, o,
                             max(0.0, now - stamps[p]) if p in stamps else 0.0)
                for p, o in rows.items()]


class GroupLagCollector:
    """Prometheus collector of the consumer-lag gauges of ``groups``, read from the cluster at
    scrape time (at most once per ``min_interval``), for processes that have no lag bookkeeping
    of their own: the Faust processor."""

    def __init__(self, settings: Settings, groups: list[Group], min_interval: float = 2.0
                 ) -> None:
        self._reader = LagReader(settings)
        self._groups = groups
        self._min_interval = min_interval
        self._rows: list[LagRow] = []
        self._at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        """Yield the lag gauges (the last good reading when the cluster cannot be read)."""
        if time.monotonic() - self._at >= self._min_interval:
            try:
                self._rows = [LagRow(r.group, r.topic, r.partition, r.lag, r.lag_seconds)
                              for g in self._groups for r in self._reader.observe(g)]
                self._at = time.monotonic()
            except KafkaException as err:
                log.warning("consumer lag not readable", extra={"error": str(err)})
        return lag_families(self._rows)


@dataclass
class History:
    """Sliding windows of observations per (group, partition)."""

    window: float
    series: dict[tuple[str, int], deque[Observation]] = field(default_factory=dict)

    def add(self, rows: Iterable[PartitionLag]) -> None:
        """Record observations and drop those older than the window."""
        for r in rows:
            q = self.series.setdefault((r.group, r.partition), deque())
            q.append(r.observation)
            while q and r.observation.at - q[0].at > self.window:
                q.popleft()

    def status(self, group: str, partition: int) -> Status:
        """Return the partition's status over its window."""
        return partition_status(list(self.series.get((group, partition), ())))


def _report(groups: list[Group], latest: dict[str, list[PartitionLag]], history: History,
            as_json: bool, out: TextIO) -> bool:
    """Print one report; return whether every group is OK."""
    all_ok = True
    docs = []
    for g in groups:
        rows = latest.get(g.name, [])
        statuses = {r.partition: history.status(g.name, r.partition) for r in rows}
        gs = group_status(list(statuses.values()))
        all_ok &= gs is Status.OK
        total = sum(r.lag for r in rows)
        seconds = max((r.lag_seconds for r in rows), default=0.0)
        if as_json:
            docs.append({"group": g.name, "role": g.role, "topic": g.topic,
                         "status": gs.name, "lag_messages": total, "lag_seconds": seconds,
                         "partitions": [{"partition": r.partition,
                                         "committed": r.observation.committed,
                                         "end": r.observation.end, "lag_messages": r.lag,
                                         "lag_seconds": round(r.lag_seconds, 3),
                                         "members": r.observation.members,
                                         "status": statuses[r.partition].name}
                                        for r in rows]})
            continue
        out.write(f"{g.name} ({g.role}) on {g.topic}: {gs.name}  lag {total} messages, "
                  f"{seconds:.1f} s\n")
        out.write("  partition  committed        end        lag   lag_s  status\n")
        for r in rows:
            c = "-" if r.observation.committed is None else str(r.observation.committed)
            out.write(f"  {r.partition:9d} {c:>10s} {r.observation.end:10d} {r.lag:10d} "
                      f"{r.lag_seconds:7.1f}  {statuses[r.partition].name}\n")
    if as_json:
        out.write(json.dumps({"at": time.time(), "ok": all_ok, "groups": docs}) + "\n")
    out.flush()
    return all_ok


def run_lag(settings: Settings, *, as_json: bool, watch: bool, window: float, interval: float,
            out: TextIO | None = None) -> int:
    """Observe every group for ``window`` seconds (or forever with ``watch``); print; return
    0 when every group is OK, 1 otherwise."""
    out = out or sys.stdout
    groups = groups_of(settings)
    reader = LagReader(settings)
    history = History(window)
    ok = True
    try:
        start = time.monotonic()
        while True:
            latest: dict[str, list[PartitionLag]] = {}
            for g in groups:
                latest[g.name] = reader.observe(g)
                history.add(latest[g.name])
            done = not watch and time.monotonic() - start + interval > window
            if watch or done:
                if watch and not as_json and out.isatty():
                    out.write("\x1b[2J\x1b[H")
                ok = _report(groups, latest, history, as_json, out)
            if done:
                return 0 if ok else 1
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0 if ok else 1
    finally:
        reader.close()
