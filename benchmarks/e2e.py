"""Stage (d): end to end, webhook accepted by ingest -> delivered at the receiver.

The job is NetBox's baseline job (../shared/baselines/netbox-rq.md): ``ipam.ipaddress``
creations, one rule (``ipam.ipaddress``, ``object_created``) -> one webhook sink sending
NetBox's own body, signed. ``loadgen`` (Go) posts the captured IP-address creations, each made a
new object with its own request id and signed, to ``nbstream ingest`` (1 process); the
processor and the sink worker run as in production; ``loadgen receive`` (Go) is the receiver.

Latency of an event = its arrival at the receiver - the moment ingest's 202 reached the client
(both clocks are this host's). Delivered/s = events delivered / (last arrival - start of load).
Where the time goes, per event, from the Kafka timestamps the producers set (milliseconds):
"ingest ack" = 202 - the raw record's timestamp (ingest's produce call: linger and the broker's
acknowledgement), "processor" = the sink record's timestamp - the raw record's (fetch wait,
batching, routing), "sink worker" = arrival - the sink record's timestamp (the processor's
publish, the sink worker's fetch and batch, the HTTP delivery).
Cases: open loop at 100 and 1,000 events/s, and closed loop with 64 clients (the highest rate
the pipeline sustains: ingest accepts as fast as it can, the figure is what got delivered).
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from benchmarks.common import (
    Bench,
    GoReceiver,
    base_config,
    cpu_seconds,
    go_receiver,
    read_arrivals,
    run_load,
    unique_templates,
)
from benchmarks.report import E2E_MAX_CASE
from benchmarks.stats import Figure, percentile
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.e2e.harness import assert_alive, nbstream_processes

__all__ = ["run"]

SINK = "hook"
# Figures of each case: metric -> unit. The stage split is p50 and p99 of each stage.
STAGES = ("ingest ack", "processor", "sink worker")
METRICS = {"delivered": "events/s", "latency p50": "ms", "latency p95": "ms",
           "latency p99": "ms", "CPU per event": "µs", "broker CPU per event": "µs",
           **{f"{stage} {q}": "ms" for stage in STAGES for q in ("p50", "p99")}}


class RecordTimes:
    """Reads the timestamps of the records a load added to the raw and the sink topic."""

    def __init__(self, servers: str, topics: Topics) -> None:
        self._consumer = Consumer({"bootstrap.servers": servers, "group.id": "nbstream-bench",
                                   "enable.auto.commit": False})
        self._serde = make_serde(None)
        self._raw, self._sink = topics.raw, topics.sink(SINK)
        self._start: dict[str, dict[int, int]] = {}

    def mark(self) -> None:
        """Note each topic's end, so ``read`` returns only the records that follow."""
        self._start = {topic: self._ends(topic) for topic in (self._raw, self._sink)}

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        """Return source id -> record timestamp (unix ns) of the raw and of the sink records
        since ``mark``."""
        return self._read(self._raw, "NetBoxEvent"), self._read(self._sink, "SinkRecord")

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()

    def _ends(self, topic: str) -> dict[int, int]:
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}

    def _read(self, topic: str, kind: str) -> dict[str, int]:
        start, end = self._start[topic], self._ends(topic)
        left = {p for p in end if end[p] > start.get(p, 0)}
        self._consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in left])
        out: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while left:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} to its end")
            for message in self._consumer.consume(1000, 1.0):
                part, offset, value = message.partition(), message.offset(), message.value()
                if message.error() or part is None or offset is None or value is None:
                    continue
                sid = str(self._serde.decode(kind, value)["source_id"])
                out.setdefault(sid, message.timestamp()[1] * 1_000_000)
                if offset + 1 >= end[part]:
                    left.discard(part)
        self._consumer.unassign()
        return out


def stage_split(accepted: dict[str, int], arrivals: dict[str, int], raw: dict[str, int],
                sink: dict[str, int]) -> dict[str, float]:
    """Return p50 and p99 of each stage's share of the latency (ms), from the times of
    acceptance, arrival, and the raw and sink records (unix ns by source id)."""
    ids = [sid for sid in accepted if sid in raw and sid in sink]
    if len(ids) < len(accepted):
        raise RuntimeError(f"{len(accepted) - len(ids)} accepted events missing from the topics")
    spans = {"ingest ack": (raw, accepted), "processor": (raw, sink),
             "sink worker": (sink, arrivals)}
    out: dict[str, float] = {}
    for stage, (start, end) in spans.items():
        ms = [(end[sid] - start[sid]) / 1e6 for sid in ids]
        out.update({f"{stage} p50": percentile(ms, 50), f"{stage} p99": percentile(ms, 99)})
    return out


def config(bench: Bench, tmp: Path, receiver: GoReceiver) -> dict[str, Any]:
    """Return the one-rule webhook pipeline's config."""
    cfg = base_config(bench, bench.prefix(), tmp)
    cfg["sinks"] = {SINK: {"type": "webhook", "payload_url": receiver.url(), "body": "netbox",
                           "secret": "receiver-secret"}}
    cfg["rules"] = [{"name": "ip-created", "object_types": ["ipam.ipaddress"],
                     "event_types": ["object_created"], "sinks": [SINK]}]
    return cfg


def one_load(url: str, receiver: GoReceiver, procs: list[Any], tmp: Path,
             times: RecordTimes | None = None, broker_pid: int | None = None,
             **load: Any) -> dict[str, float]:
    """Run one load against the pipeline, wait for its deliveries; return the figures (with
    the stage split when ``times`` is given, the broker's CPU when ``broker_pid`` is)."""
    receiver.reset()
    if times is not None:
        times.mark()
    accepted_file = tmp / "accepted.txt"
    pids = [p.pid for p in procs]
    started_ns = time.time_ns()
    cpu0 = cpu_seconds(pids)
    broker0 = cpu_seconds([broker_pid]) if broker_pid else 0.0
    summary = run_load(url, unique_templates("ipam.ipaddress", "created"), tmp, unique=True,
                       objects=1_000_000, accepted=accepted_file, **load)
    accepted = read_arrivals(accepted_file.read_text())
    assert_alive(procs)
    got = receiver.wait_for(len(accepted), timeout=60 + len(accepted) / 200)
    cpu = cpu_seconds(pids) - cpu0
    broker_cpu = cpu_seconds([broker_pid]) - broker0 if broker_pid else 0.0
    arrivals = receiver.arrivals()
    missing = set(accepted) - set(arrivals)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(accepted)} accepted events were not "
                           f"delivered (receiver got {got})")
    latencies = [(arrivals[sid] - at) / 1e6 for sid, at in accepted.items()]
    last = max(arrivals[sid] for sid in accepted)
    figures = {"delivered": len(accepted) / ((last - started_ns) / 1e9),
               "accepted": summary["accepted_per_s"],
               "latency p50": percentile(latencies, 50), "latency p95": percentile(latencies, 95),
               "latency p99": percentile(latencies, 99),
               "CPU per event": cpu / len(accepted) * 1e6}
    if broker_pid:
        figures["broker CPU per event"] = broker_cpu / len(accepted) * 1e6
    if times is not None:
        figures.update(stage_split(accepted, arrivals, *times.read()))
    return figures


def run(bench: Bench) -> list[Figure]:
    """Measure each load case ``bench.runs`` times on one running pipeline."""
    seconds = 2.0 if bench.quick else 10.0
    cases: list[tuple[str, dict[str, Any]]] = [
        ("100 events/s", {"rate": 100, "concurrency": 8, "duration": seconds}),
        ("1,000 events/s", {"rate": 1000, "concurrency": 32, "duration": seconds}),
        (E2E_MAX_CASE, {"concurrency": 64, "duration": seconds / 2}),
    ]
    if bench.quick:
        cases = cases[1:]
    figures: list[Figure] = []
    tmp = bench.scratch("e2e")
    with go_receiver() as receiver:
        cfg = config(bench, tmp, receiver)
        settings = bench.settings(cfg)
        port = cfg["ingest"]["port"]
        url = f"http://127.0.0.1:{port}/webhook"
        broker_pid = bench.broker.running_pid()
        if broker_pid is None:
            raise RuntimeError("the benchmark's broker is not running")
        with nbstream_processes(cfg, tmp, ["ingest"], ["process"], ["sink", SINK],
                                ingest_port=port) as procs, \
                closing(RecordTimes(settings.kafka.servers,
                                    Topics(settings.kafka.topic_prefix))) as times:
            # Warm up: group assignment, connections, the JIT of the broker.
            one_load(url, receiver, procs, tmp, rate=200, concurrency=8,
                     duration=1.0 if bench.quick else 3.0)
            for case, load in cases:
                runs = [one_load(url, receiver, procs, tmp, times, broker_pid, **load)
                        for _ in range(bench.runs)]
                notes = {**load, "ingest_processes": 1, "rule": "ipam.ipaddress created",
                         "accepted_per_s": [r["accepted"] for r in runs]}
                for metric, unit in METRICS.items():
                    target = ""
                    if case == E2E_MAX_CASE and metric == "delivered":
                        target = "≥ 5,000/s"
                    elif case == "1,000 events/s" and metric == "latency p99":
                        target = "≤ 100 ms"
                    figures.append(Figure("e2e", case, metric, unit,
                                          tuple(r[metric] for r in runs), target=target,
                                          notes=notes))
                by_metric = {f.metric: f.median for f in figures if f.case == case}
                bench.say(f"e2e {case}: {by_metric['delivered']:,.0f} delivered/s, p99 "
                          f"{by_metric['latency p99']:,.1f} ms")
    return figures
