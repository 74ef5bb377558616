"""Stage (b): the processor's events/s with 1, 10 and 100 rules, and with 2 workers.

The raw topic (6 partitions) is filled beforehand with N distinct NetBox events (the captured
object events, each with its own object id and request id, normalised and Avro-encoded exactly
as ingest would), then ``nbstream process`` runs as in production (Faust, the batched route
agent, the dedup table with its changelog, each batch acknowledged once its outputs are
stored). The rate counts the records routed to the sink topic, from the first to the last, so
Faust's start-up is not timed; the run ends only once the processor also committed every raw
offset. Every rule has conditions and routes to the one sink ``bench``; the rules spread over
the 8 object types of the fixtures, so with 100 rules an event is tested against ~13.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from benchmarks.common import (
    OBJECT_SENTINEL,
    SEQ_SENTINEL,
    Bench,
    background,
    base_config,
    cpu_seconds,
    unique_templates,
)
from benchmarks.stats import Figure
from processors.routing import RecordFactory
from processors.rules import RuleEngine
from producers.normalize import normalize
from schemas.config import NetBoxSettings, Settings, parse_settings
from schemas.records import NetBoxEvent
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.e2e.harness import assert_alive, nbstream_processes

__all__ = ["encoded_events", "rules", "run"]

OBJECT_TYPES = ("dcim.device", "dcim.interface", "ipam.ipaddress", "dcim.site", "ipam.prefix",
                "ipam.vlan", "circuits.circuit", "tenancy.tenant")
CASES = ((1, 1), (1, 10), (1, 100), (2, 100))  # (workers, rules)


def rules(count: int) -> list[dict[str, Any]]:
    """Return ``count`` rules with conditions that hold for the bench events, one sink."""
    out = []
    for i in range(count):
        conditions = {"and": [
            {"attr": "id", "value": 0, "op": "gt"},
            {"or": [{"attr": "display", "value": f"no-such-{i}", "op": "contains"},
                    {"attr": "url", "value": "/api/", "op": "contains"}]},
        ]}
        rule: dict[str, Any] = {"name": f"rule-{i}", "conditions": conditions, "sinks": ["bench"]}
        if count > 1:
            rule["object_types"] = [OBJECT_TYPES[i % len(OBJECT_TYPES)]]
        out.append(rule)
    return out


def encoded_events(bench: Bench, count: int) -> list[tuple[bytes, bytes]]:
    """Return ``count`` distinct (key, Avro value) raw records, as ingest would produce them."""
    netbox = NetBoxSettings(**base_config(bench, "probe.", bench.tmp)["netbox"])
    templates = [t["body"] for t in unique_templates()]
    serde = make_serde(None)
    now = datetime.now(UTC)
    out = []
    for k in range(count):
        body = templates[k % len(templates)].replace(
            str(OBJECT_SENTINEL), str(k % 5000 + 1)).replace(SEQ_SENTINEL, f"bench-{k}")
        event = normalize(json.loads(body), body, netbox, now)
        out.append((event.object_key.encode(), serde.encode("NetBoxEvent", event.to_dict(),
                                                             "raw")))
    return out


def fill(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    """Produce ``records`` to the raw topic (murmur2 keys, as ingest places them)."""
    producer = Producer({"bootstrap.servers": settings.kafka.servers, "linger.ms": 20,
                         "compression.type": "lz4", "partitioner": "murmur2_random",
                         "message.max.bytes": 8 * 1024 * 1024})
    topic = Topics(settings.kafka.topic_prefix).raw
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not fill the raw topic")


def routed(consumer: Consumer, topic: str, partitions: int) -> int:
    """Return how many records the sink topic holds (outputs appear there at each commit)."""
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(partitions))
    except KafkaException:  # a broker hiccup: count again at the next poll
        return 0


def committed(consumer: Consumer, topic: str, partitions: int) -> int | None:
    """Return the sum of the processor group's committed offsets on the raw topic (None while
    the group coordinator is not ready)."""
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                 timeout=10)
    except KafkaException:  # NOT_COORDINATOR and the like while the group is being created
        return None
    return sum(max(tp.offset, 0) for tp in tps)


@contextmanager
def faust_floor(config: dict[str, Any], tmp: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``benchmarks.faust_floor`` (Faust forwarding records unchanged) instead of the
    processor; stop it afterwards."""
    path = tmp / "nbstream.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with background([sys.executable, "-m", "benchmarks.faust_floor", str(path)],
                    tmp / "faust-floor.log") as proc:
        yield [proc]


def one_run(bench: Bench, workers: int, count: int, records: list[tuple[bytes, bytes]],
            want: int, floor: bool = False) -> tuple[float, float]:
    """Process ``records`` with ``workers`` processes and ``count`` rules (or, with ``floor``,
    forward them with a bare Faust agent) until ``want`` sink records were routed; return
    events/s and the processes' CPU µs per event."""
    tmp = bench.scratch(f"processor-{workers}-{count}")
    prefix = bench.prefix()
    config = base_config(bench, prefix, tmp)
    config["sinks"] = {"bench": {"type": "file", "path": str(tmp / "unused.jsonl")}}
    config["rules"] = rules(count)
    settings = bench.settings(config)
    fill(settings, records)
    topics = Topics(prefix)
    total = len(records)
    consumer = Consumer({"bootstrap.servers": settings.kafka.servers,
                         "group.id": topics.processor_group()})
    sink = topics.sink("bench")
    try:
        run = (faust_floor(config, tmp) if floor
               else nbstream_processes(config, tmp, *(["process"] for _ in range(workers))))
        with run as procs:
            first, first_at, cpu0 = 0, 0.0, 0.0
            deadline = time.monotonic() + 180 + total / 500
            done = 0
            while done < want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"processor routed {done} of {want} in time")
                assert_alive(procs)
                time.sleep(0.05)
                done = routed(consumer, sink, settings.kafka.partitions)
                if done and not first_at:
                    first, first_at = done, time.monotonic()
                    cpu0 = cpu_seconds([p.pid for p in procs])
            elapsed = time.monotonic() - first_at
            cpu = cpu_seconds([p.pid for p in procs]) - cpu0
            # Not timed: the input must also be committed, or nothing was really processed.
            while (committed(consumer, topics.raw, settings.kafka.partitions) or 0) < total:
                if time.monotonic() > deadline:
                    raise RuntimeError("processor did not commit its input in time")
                assert_alive(procs)
                time.sleep(0.1)
    finally:
        consumer.close()
    # Events per sink record (1 when every event routes to the one sink once).
    processed = (want - first) * total / want
    return processed / elapsed, cpu / processed * 1e6


def route_all(count: int, records: list[tuple[bytes, bytes]]) -> tuple[int, float]:
    """Do nbstream's own per-event work without Faust on ``records`` with ``count`` rules:
    decode, match, build and encode the sink records (what the agent does between Faust's
    calls). Return how many sink records it made and the CPU seconds it took."""
    engine = RuleEngine(parse_settings({"rules": rules(count), "sinks": {
        "bench": {"type": "file", "path": "unused"}}}, env={}).rules)
    factory = RecordFactory("bench", "https://example.invalid/{event_type}", "0.0.0")
    serde = make_serde(None)
    made = 0
    started = time.process_time()
    for _, value in records:
        nb = NetBoxEvent.from_dict(serde.decode("NetBoxEvent", value))
        match = engine.match(nb.object_type, nb.event_type, nb.data)
        for record in factory.records(nb, match):
            serde.encode("SinkRecord", record.to_dict(), "bench")
            made += 1
    return made, time.process_time() - started


def run(bench: Bench) -> list[Figure]:
    """Measure every (workers, rules) case; return events/s and CPU per event figures."""
    count = 3_000 if bench.quick else 20_000
    cases = ((1, 1), (1, 100)) if bench.quick else CASES
    records = encoded_events(bench, count)
    # Sink records each rule count makes of ``records``: what a run waits to see routed.
    wanted = {n: route_all(n, records)[0] for n in {n for _, n in cases}}
    figures = []
    for workers, n in cases:
        results = [one_run(bench, workers, n, records, wanted[n]) for _ in range(bench.runs)]
        case = f"{workers} worker{'s' if workers > 1 else ''}, {n} rule{'s' if n > 1 else ''}"
        notes: dict[str, Any] = {"events": count, "workers": workers, "rules": n, "partitions": 6}
        target = "≥ 20,000/s" if (workers, n) == (1, 100) else ""
        figures.append(Figure("processor", case, "events", "events/s",
                              tuple(r for r, _ in results), target=target, notes=notes))
        figures.append(Figure("processor", case, "CPU per event", "µs",
                              tuple(c for _, c in results), notes=notes))
        bench.say(f"processor {case}: {figures[-2].median:,.0f} events/s, "
                  f"{figures[-1].median:,.0f} µs CPU per event")
    results = [one_run(bench, 1, 1, records, len(records), floor=True)
               for _ in range(bench.runs)]
    notes = {
        "events": count, "what": "a Faust agent forwarding each record unchanged, with the "
        "processor's app settings; no nbstream work per event"}
    for metric, unit, values in (("events", "events/s", tuple(r for r, _ in results)),
                                 ("CPU per event", "µs", tuple(c for _, c in results))):
        figures.append(Figure("processor", "Faust floor (forward only)", metric, unit, values,
                              notes=notes))
    bench.say(f"processor Faust floor: {figures[-2].median:,.0f} events/s, "
              f"{figures[-1].median:,.0f} µs CPU per event")
    for n in (1, 100):
        rates = tuple(len(records) / route_all(n, records)[1] for _ in range(bench.runs))
        figures.append(Figure("processor", f"logic only, {n} rule{'s' if n > 1 else ''}",
                              "events", "events/s", rates, notes={
                                  "what": "decode, match, build and encode per event, in one "
                                          "process, no Faust and no broker (CPU time)"}))
        bench.say(f"processor logic only, {n} rules: {figures[-1].median:,.0f} events/s")
    return figures
