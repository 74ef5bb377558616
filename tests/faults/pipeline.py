"""The fault-suite harness: a real pipeline whose stages can be killed and restarted, a NetBox-like
load generator, and the accounting every fault test prints and asserts on.

``FaultPipeline`` writes one config (one sink delivering to a ``Destination``, one rule routing
every object event to it) and runs each stage as its own ``python -m nbstream`` process, so a
test can ``kill -9`` one of them and start it again. A ``Destination`` names the sink's type and
settings and reads back the envelopes that arrived: ``WebhookDestination`` (a ``webhook`` sink
named ``hook`` posting to a harness ``Receiver``) or ``MqttDestination`` (an ``mqtt`` sink
publishing to a Mosquitto that a ``Subscriber`` reads). ``post_load`` plays NetBox: concurrent
workers, each owning a disjoint set of objects and posting its objects' events in order,
signed, with no retry (NetBox has none). ``summarize`` compares what ingest acknowledged with
what the destination got.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import yaml
from confluent_kafka import Consumer, KafkaException, TopicPartition

from nbstream.admin import ensure_topics
from schemas.config import Settings, parse_settings
from schemas.identity import egress_id
from schemas.topics import Topics
from tests.conftest import FIXTURE_SECRET, free_port
from tests.e2e.harness import Receiver
from tests.sinks.servers.mosquitto import Subscriber

__all__ = [
    "SINK",
    "Delivered",
    "Destination",
    "Event",
    "FaultPipeline",
    "MqttDestination",
    "Posted",
    "Progress",
    "StageDied",
    "Summary",
    "WebhookDestination",
    "acked_ids",
    "assert_sound",
    "decode",
    "make_events",
    "seeded",
    "summarize",
]

SINK = "hook"
OBJECT_TYPE = "dcim.device"
STAGES = ("ingest", "process", "sink")  # what start_all starts; add_stage defines others
# A member killed with SIGKILL keeps its partitions until its session times out, so a restarted
# worker waits that long before it gets them back. The defaults (librdkafka 45 s, Faust 60 s)
# would make every kill cost a minute; the guarantees do not depend on the value.
SINK_SESSION_TIMEOUT_MS = 6000
PROCESSOR_SESSION_TIMEOUT = 8.0


@dataclass(frozen=True)
class Event:
    """One synthetic NetBox 4.6 ``updated`` webhook: update ``seq`` of device ``obj``."""

    obj: int
    seq: int
    body: bytes


def make_events(objects: Iterable[int], updates: int, run: str) -> list[Event]:
    """Return ``updates`` events per object, seq-major (as they would be generated over time).

    Each has a unique timestamp and request id, so each has its own source_id.
    """
    start = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
    objs = list(objects)
    out = []
    for seq in range(1, updates + 1):
        for obj in objs:
            ts = start + timedelta(seconds=seq, microseconds=obj)
            request = {"id": f"{run}-{obj}-{seq}", "method": "PATCH",
                       "path": f"/api/dcim/devices/{obj}/", "user": "admin"}
            payload = {
                "event": "updated",
                "timestamp": ts.isoformat(),
                "object_type": OBJECT_TYPE,
                "username": "admin",
                "request_id": request["id"],
                "data": {"id": obj, "url": f"/api/dcim/devices/{obj}/", "name": f"dev-{obj}",
                         "seq": seq, "status": {"value": "active", "label": "Active"}},
                "request": request,
                "snapshots": {"prechange": {"seq": seq - 1}, "postchange": {"seq": seq}},
            }
            out.append(Event(obj, seq, json.dumps(payload).encode()))
    return out


def sign(body: bytes, secret: str = FIXTURE_SECRET) -> str:
    """Return NetBox's X-Hook-Signature of ``body``."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


@dataclass(frozen=True)
class Posted:
    """One webhook request and how ingest answered it (status 0: no answer at all)."""

    event: Event
    status: int
    source_id: str | None
    retry_after: str | None
    sent: float  # time.monotonic()
    answered: float


@dataclass
class Stage:
    """One running (or killed) nbstream stage process."""

    name: str
    command: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    logs: list[Path] = field(default_factory=list)


class StageDied(AssertionError):
    """A stage exited on its own."""


class Destination(Protocol):
    """Where the pipeline's one sink delivers, and what arrived there."""

    @property
    def sink(self) -> str:
        """The sink's name (its topic, group and egress ids derive from it)."""
        ...

    def sink_config(self) -> dict[str, Any]:
        """Return the sink's ``type`` and own settings (the pipeline adds the shared ones)."""
        ...

    def bodies(self, start: int = 0) -> list[bytes]:
        """Return the delivered envelopes from the ``start``-th on, in arrival order."""
        ...


@dataclass(frozen=True)
class WebhookDestination:
    """A ``webhook`` sink posting envelopes to ``path`` of a harness Receiver on ``port``;
    ``settings`` adds webhook fields (headers, connection pool, ...)."""

    receiver: Receiver
    port: int
    sink: str = SINK
    path: str = "/hook"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def sink_config(self) -> dict[str, Any]:
        """Return the webhook sink's settings."""
        return {"type": "webhook", "payload_url": f"http://127.0.0.1:{self.port}{self.path}",
                **self.settings}

    def bodies(self, start: int = 0) -> list[bytes]:
        """Return the bodies the receiver got on ``path``."""
        return [d.body for d in self.receiver.by_path(self.path)[start:]]


@dataclass(frozen=True)
class MqttDestination:
    """An ``mqtt`` sink publishing with QoS 1 to the Mosquitto on ``port``; ``subscriber`` is
    subscribed (QoS 1) before any load starts and stays connected, so it misses nothing."""

    port: int
    subscriber: Subscriber
    sink: str = "mqtt"

    def sink_config(self) -> dict[str, Any]:
        """Return the MQTT sink's settings."""
        return {"type": "mqtt", "host": "127.0.0.1", "port": self.port, "qos": 1}

    def bodies(self, start: int = 0) -> list[bytes]:
        """Return the payloads the subscriber got."""
        return [m.payload for m in self.subscriber.messages()[start:]]


class FaultPipeline:
    """One test's pipeline: config, stages as processes, load, and log tails for failures."""

    def __init__(
        self,
        tmp: Path,
        bootstrap: str,
        prefix: str,
        destination: Destination,
        *,
        retry: Mapping[str, Any] | None = None,
        produce_timeout: float = 10.0,
        partitions: int = 3,
        batch_size: int = 500,
        commit_interval: float = 0.05,
    ) -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.destination = destination
        self.topics = Topics(prefix)
        self.ingest_port = free_port()
        self.metrics_port = free_port()
        self.run = uuid.uuid4().hex[:8]
        self.config: dict[str, Any] = {
            "netbox": {"id": "nb-faults", "version": "4.6.8",
                       "webhook_secrets": [FIXTURE_SECRET]},
            "environment": "faults",
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix,
                      "partitions": partitions,
                      "client": {"session.timeout.ms": str(SINK_SESSION_TIMEOUT_MS),
                                 "heartbeat.interval.ms": "1000"}},
            "ingest": {"port": self.ingest_port, "produce_timeout": produce_timeout},
            "processor": {"data_dir": str(tmp / "processor"), "web_port": 0,
                          "commit_interval": commit_interval,
                          "session_timeout": PROCESSOR_SESSION_TIMEOUT, "heartbeat_interval": 1},
            "sinks": {self.sink: {
                **destination.sink_config(),
                "metrics_port": self.metrics_port, "batch_size": batch_size,
                "retry": dict(retry or {"initial_delay": 0.05, "max_delay": 1.0,
                                        "max_attempts": 10_000, "max_elapsed": 300}),
            }},
            "rules": [{"name": "every-object-event", "sinks": [self.sink]}],
        }
        self.path = tmp / "nbstream.yaml"
        self.path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.settings: Settings = parse_settings(self.config, env={})
        self.stages: dict[str, Stage] = {}
        self.add_stage("ingest", "ingest")
        self.add_stage("process", "process")
        self.add_stage("sink", "sink", self.sink)
        self._watermarks: Consumer | None = None
        self._routed = 0

    def update(self, section: str, **values: Any) -> None:
        """Change settings of ``section`` for the stages started from now on."""
        self.config[section] = {**self.config.get(section, {}), **values}
        self.path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.settings = parse_settings(self.config, env={})

    @property
    def sink(self) -> str:
        """The name of the pipeline's one sink (its destination's)."""
        return self.destination.sink

    # -- stages ---------------------------------------------------------------------------

    def add_stage(self, name: str, *args: str, env: Mapping[str, str] | None = None,
                  log_args: Sequence[str] = ("--log-level", "warning")) -> Stage:
        """Define (or redefine) stage ``name``: ``nbstream <args>`` on this pipeline's config,
        with ``env`` added to the environment; ``start(name)`` runs it."""
        command = [sys.executable, "-m", "nbstream", "--config", str(self.path), *log_args,
                   *args]
        stage = self.stages[name] = Stage(name, command, dict(env or {}))
        return stage

    def create_topics(self) -> None:
        """Create the topics the config needs (as ``nbstream topics`` would)."""
        ensure_topics(self.settings)

    def start(self, name: str) -> None:
        """Start stage ``name`` (ingest, process or sink) as a new process."""
        stage = self.stages[name]
        if stage.proc is not None and stage.proc.poll() is None:
            raise RuntimeError(f"{name} is already running")
        log_path = self.tmp / f"{name}-{stage.starts}.log"
        stage.logs.append(log_path)
        env = {**os.environ, **stage.env}
        with log_path.open("wb") as log:
            stage.proc = subprocess.Popen(stage.command, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env)
        stage.starts += 1

    def start_all(self) -> None:
        """Start every stage."""
        for name in STAGES:
            self.start(name)

    def kill(self, name: str) -> int:
        """SIGKILL stage ``name`` by its PID and reap it; return the PID."""
        stage = self.stages[name]
        proc = stage.proc
        if proc is None or proc.poll() is not None:
            raise StageDied(f"{name} was not running when it was to be killed\n{self.tail(name)}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stage.kills += 1
        return proc.pid

    def stop_all(self) -> None:
        """SIGTERM every stage this pipeline started, by PID; SIGKILL what does not stop."""
        if self._watermarks is not None:
            self._watermarks.close()
            self._watermarks = None
        running = [s.proc for s in self.stages.values()
                   if s.proc is not None and s.proc.poll() is None]
        for p in running:
            p.terminate()
        for p in running:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)

    def check_alive(self) -> None:
        """Raise StageDied, with its log, if a started stage exited on its own."""
        for name, stage in self.stages.items():
            if stage.proc is not None and stage.proc.poll() is not None:
                raise StageDied(
                    f"{name} exited with {stage.proc.returncode}\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        """Return the end of stage ``name``'s latest log."""
        logs = self.stages[name].logs
        if not logs or not logs[-1].is_file():
            return f"({name}: no log)"
        text = logs[-1].read_text(errors="replace")[-chars:]
        return f"--- {logs[-1].name} ---\n{text}"

    def tails(self) -> str:
        """Return the log tails of every stage and the topics' offsets, for a failure message."""
        logs = "\n".join(self.tail(name) for name, s in self.stages.items() if s.logs)
        return f"{logs}\n{self.offsets()}"

    def offsets(self) -> str:
        """Return end offsets of the raw and sink topics and the groups' committed offsets."""
        lines = []
        for topic, group in ((self.topics.raw, self.topics.processor_group()),
                             (self.topics.sink(self.sink), self.topics.sink_group(self.sink))):
            try:
                ends, committed = self.progress(topic, group)
            except Exception as err:  # noqa: BLE001 - diagnostics must not mask the failure
                lines.append(f"(offsets of {topic} unavailable: {err})")
                continue
            lines.append(f"{topic}: end={ends} committed[{group}]={committed}")
        return "\n".join(lines)

    def progress(self, topic: str, group: str) -> tuple[list[int], list[int]]:
        """Return the end offsets of ``topic``'s partitions and ``group``'s committed offsets."""
        tps = [TopicPartition(topic, i) for i in range(self.settings.kafka.partitions)]
        c = Consumer({"bootstrap.servers": self.settings.kafka.servers, "group.id": group})
        try:
            ends = [c.get_watermark_offsets(tp, timeout=5)[1] for tp in tps]
            committed = [tp.offset for tp in c.committed(tps, timeout=5)]
        finally:
            c.close()
        return ends, committed

    def processor_caught_up(self) -> bool:
        """Return True once the processor group committed every raw record."""
        ends, committed = self.progress(self.topics.raw, self.topics.processor_group())
        return ends == committed

    async def wait_ingest_ready(self, timeout: float = 90.0) -> None:
        """Wait until ingest's /readyz answers 200."""
        url = f"http://127.0.0.1:{self.ingest_port}/readyz"
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"ingest not ready after {timeout}s\n{self.tails()}")

    async def readyz(self, client: httpx.AsyncClient) -> int:
        """Return ingest's /readyz status (0 when it does not answer)."""
        try:
            return (await client.get(f"http://127.0.0.1:{self.ingest_port}/readyz")).status_code
        except httpx.HTTPError:
            return 0

    def sink_metric(self, name: str) -> float:
        """Return the value of sample ``name`` for this sink from the worker's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        pattern = re.compile(rf'^{re.escape(name)}\{{sink="{self.sink}"\}} (\S+)$',
                             re.MULTILINE)
        match = pattern.search(text)
        return float(match.group(1)) if match else 0.0

    # -- load -----------------------------------------------------------------------------

    async def post_load(
        self,
        events: Sequence[Event],
        *,
        workers: int = 24,
        rate: float | None = None,
        on_answer: Callable[[Posted], None] | None = None,
    ) -> list[Posted]:
        """Post ``events`` as NetBox would; return every answer.

        Worker ``i`` owns the objects with ``obj % workers == i`` and posts their events in the
        given order, one request at a time, never retrying. ``rate`` (events/s over all
        workers) paces the load.
        """
        url = f"http://127.0.0.1:{self.ingest_port}/webhook"
        lanes: list[list[Event]] = [[] for _ in range(workers)]
        for ev in events:
            lanes[ev.obj % workers].append(ev)
        results: list[Posted] = []
        interval = workers / rate if rate else 0.0
        connector = aiohttp.TCPConnector(limit=workers)
        timeout = aiohttp.ClientTimeout(total=60)

        async def lane(items: list[Event], session: aiohttp.ClientSession) -> None:
            next_at = time.monotonic()
            for ev in items:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                posted = await self._post_one(session, url, ev)
                results.append(posted)
                if on_answer is not None:
                    on_answer(posted)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(lane(items, session) for items in lanes if items))
        return results

    async def _post_one(self, session: aiohttp.ClientSession, url: str, ev: Event) -> Posted:
        """POST one signed event; return the answer (status 0 on a connection failure)."""
        headers = {"Content-Type": "application/json", "X-Hook-Signature": sign(ev.body)}
        sent = time.monotonic()
        try:
            async with session.post(url, data=ev.body, headers=headers) as r:
                body = await r.read()
                status, retry_after = r.status, r.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            return Posted(ev, 0, None, None, sent, time.monotonic())
        sid = json.loads(body)["source_id"] if status == 202 else None
        return Posted(ev, status, sid, retry_after, sent, time.monotonic())

    # -- waiting --------------------------------------------------------------------------

    def deliveries(self) -> list[Delivered]:
        """Return every delivery so far, decoded, in arrival order."""
        return decode(self.destination.bodies())

    def summarize(self, posted: Sequence[Posted]) -> Summary:
        """Return the summary of ``posted`` against what the destination got so far."""
        return summarize(posted, self.deliveries(), self.sink)

    async def wait_delivered(self, source_ids: set[str], timeout: float) -> int:
        """Wait until every id in ``source_ids`` was delivered; return how many were not.

        Returns early with the count still missing after ``timeout`` seconds (the test's
        summary then reports them as lost); raises StageDied if a stage exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        missing = set(source_ids)
        seen = 0
        while True:
            self.check_alive()
            new = self.destination.bodies(seen)
            seen += len(new)
            for body in new:
                missing.discard(str(json.loads(body)["source_id"]))
            if not missing or time.monotonic() > deadline:
                return len(missing)
            await asyncio.sleep(0.2)

    def routed(self) -> int:
        """Return how many records the processor has published to the sink topic so far."""
        if self._watermarks is None:
            self._watermarks = Consumer({"bootstrap.servers": self.settings.kafka.servers,
                                         "group.id": f"{self.prefix}watermarks"})
        topic = self.topics.sink(self.sink)
        try:
            self._routed = sum(
                self._watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                for p in range(self.settings.kafka.partitions))
        except KafkaException:  # a broker hiccup: report the last known progress
            pass
        return self._routed

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds, checking the stages meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     f"{self.tails()}")
            await asyncio.sleep(0.05)


class Progress:
    """Counts the distinct events a destination got, reading only the new deliveries each
    time."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.seen = 0
        self.ids: set[str] = set()

    def unique(self) -> int:
        """Return how many distinct source ids were delivered so far."""
        new = self.destination.bodies(self.seen)
        self.seen += len(new)
        self.ids.update(str(json.loads(body)["source_id"]) for body in new)
        return len(self.ids)


@dataclass(frozen=True)
class Delivered:
    """One delivery as the receiver got it, decoded from the envelope."""

    source_id: str
    egress_id: str
    obj: int
    seq: int


def decode(bodies: Iterable[bytes]) -> list[Delivered]:
    """Return the deliveries' identities and object state, in arrival order."""
    out = []
    for body in bodies:
        env = json.loads(body)
        data = env["message"]["data"]
        out.append(Delivered(str(env["source_id"]), str(env["egress_id"]), int(data["id"]),
                             int(data["seq"])))
    return out


@dataclass(frozen=True)
class Summary:
    """What the suite prints and asserts: counts plus the ordering and identity violations."""

    sent: int
    acknowledged: int
    delivered: int
    duplicates: int
    lost: int
    egress_mismatches: list[str]
    order_violations: list[str]

    def line(self) -> str:
        """Return the one-line summary every fault test prints."""
        return (f"sent={self.sent} acknowledged={self.acknowledged} delivered={self.delivered} "
                f"duplicates={self.duplicates} lost={self.lost}")


def summarize(posted: Sequence[Posted], deliveries: Sequence[Delivered],
              sink: str = SINK) -> Summary:
    """Compare what ingest acknowledged with what was delivered.

    - delivered: distinct source ids received; duplicates: deliveries beyond the first;
      lost: acknowledged (202) source ids never delivered.
    - every delivery of a source id carries the egress_id of its first delivery (which is the
      uuid5 of the source id and the name of the ``sink``);
    - per object, first deliveries arrive in increasing ``seq``, and the last delivered state is
      the newest event delivered, no older than the last acknowledged one.
    """
    acked = acked_ids(posted)
    first: dict[str, Delivered] = {}
    duplicates = 0
    mismatches: list[str] = []
    first_seqs: dict[int, list[int]] = {}
    last_seq: dict[int, int] = {}
    for d in deliveries:
        if d.source_id in first:
            duplicates += 1
            if d.egress_id != first[d.source_id].egress_id:
                mismatches.append(f"{d.source_id}: {d.egress_id} != "
                                  f"{first[d.source_id].egress_id}")
        else:
            first[d.source_id] = d
            if d.egress_id != egress_id(d.source_id, sink):
                mismatches.append(f"{d.source_id}: egress_id {d.egress_id} is not derived")
            first_seqs.setdefault(d.obj, []).append(d.seq)
        last_seq[d.obj] = d.seq
    violations: list[str] = []
    for obj, seqs in first_seqs.items():
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            violations.append(f"object {obj}: first deliveries out of order: {seqs}")
    last_acked: dict[int, int] = {}
    for p in posted:
        if p.status == 202:
            last_acked[p.event.obj] = max(last_acked.get(p.event.obj, 0), p.event.seq)
    for obj, seqs in first_seqs.items():
        newest = max(seqs)
        if last_seq[obj] != newest or newest < last_acked.get(obj, 0):
            violations.append(f"object {obj}: last delivered state seq={last_seq[obj]}, newest "
                              f"delivered {newest}, last acknowledged {last_acked.get(obj)}")
    return Summary(
        sent=len(posted),
        acknowledged=sum(1 for p in posted if p.status == 202),
        delivered=len(first),
        duplicates=duplicates,
        lost=len(acked - set(first)),
        egress_mismatches=mismatches,
        order_violations=violations,
    )


def acked_ids(posted: Iterable[Posted]) -> set[str]:
    """Return the source ids ingest acknowledged with 202."""
    return {p.source_id for p in posted if p.status == 202 and p.source_id}


def assert_sound(summary: Summary, pipeline: FaultPipeline) -> None:
    """Assert lost=0, egress ids of duplicates, and per-object order."""
    assert summary.lost == 0, f"{summary.line()}\n{pipeline.tails()}"
    assert not summary.egress_mismatches, summary.egress_mismatches[:10]
    assert not summary.order_violations, summary.order_violations[:10]


def seeded(seed: int | None = None) -> tuple[int, random.Random]:
    """Return a seed (from $NBSTREAM_FAULT_SEED, or fresh) and its Random, for reproducible
    fault timing."""
    if seed is None:
        env = os.environ.get("NBSTREAM_FAULT_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(2**32)
    return seed, random.Random(seed)
