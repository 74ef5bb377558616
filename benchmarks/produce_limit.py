"""Stage (e): the broker's limit (Kafka's ProducerPerformance) against nbstream's producer.

Both write to the bench broker, to topics of 6 partitions, records of the same size (the median
Avro-encoded NetBoxEvent of the captured webhooks), with acks=all (and idempotence, the Java
client's default with acks=all, as nbstream's producer). ``org.apache.kafka.tools.
ProducerPerformance`` comes from the provisioned jars (kafka-tools) and sends as fast as it can
(``--throughput -1``). nbstream's figure is its ingest producer (``producers.kafka_producer.
KafkaProducer`` with ingest's librdkafka config: linger 2 ms, lz4) driven from asyncio with up to
2,000 records in flight, each ``produce`` awaited until the broker acknowledged it, the way
ingest awaits it per request. The ratio is perf tool ÷ nbstream (target ≤ 2).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import time

from benchmarks.common import Bench, base_config
from benchmarks.processor import encoded_events
from benchmarks.stats import Figure
from nbstream.kafka_local import install
from producers.kafka_producer import KafkaProducer
from schemas.config import Settings
from schemas.topics import Topics

__all__ = ["run"]

IN_FLIGHT = 2_000
_PERF_LINE = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


def perf_tool(bench: Bench, topic: str, count: int, size: int) -> float:
    """Run ProducerPerformance once; return its records/s."""
    libs = install(bench.broker.version, quiet=True)
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(count), "--record-size", str(size),
           "--throughput", "-1", "--producer-props",
           f"bootstrap.servers={bench.broker.bootstrap_servers}", "acks=all"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    matches = _PERF_LINE.findall(done.stdout)
    if not matches:
        raise RuntimeError(f"no result from ProducerPerformance:\n{done.stdout[-2000:]}")
    return float(matches[-1][1])


async def nbstream_rate(settings: Settings, records: list[tuple[bytes, bytes]]) -> float:
    """Produce ``records`` through KafkaProducer, ``IN_FLIGHT`` awaited at a time; return /s."""
    producer = KafkaProducer.from_settings(settings)
    topic = Topics(settings.kafka.topic_prefix).raw
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(key: bytes, value: bytes) -> None:
        try:
            await producer.produce(topic, key, value)
        finally:
            slots.release()

    try:
        started = time.perf_counter()
        tasks = []
        for key, value in records:
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(key, value)))
        await asyncio.gather(*tasks)
        return len(records) / (time.perf_counter() - started)
    finally:
        await asyncio.to_thread(producer.close, 10)


def run(bench: Bench) -> list[Figure]:
    """Measure both producers ``bench.runs`` times, alternating; return rates and the ratio."""
    count = 5_000 if bench.quick else 50_000
    records = encoded_events(bench, count)
    size = int(statistics.median(len(v) for _, v in records))
    perf, ours = [], []
    for _ in range(bench.runs):
        settings = bench.settings(base_config(bench, bench.prefix(), bench.tmp))
        perf.append(perf_tool(bench, Topics(settings.kafka.topic_prefix).raw, count, size))
        settings = bench.settings(base_config(bench, bench.prefix(), bench.tmp))
        ours.append(asyncio.run(nbstream_rate(settings, records)))
    notes = {"records": count, "record_bytes": size, "acks": "all", "partitions": 6}
    figures = [
        Figure("produce", "Kafka ProducerPerformance", "records", "records/s", tuple(perf),
               notes=notes),
        Figure("produce", "nbstream raw-topic producer", "records", "records/s", tuple(ours),
               notes={**notes, "in_flight": IN_FLIGHT}),
        Figure("produce", "perf tool ÷ nbstream producer", "ratio", "×",
               tuple(p / o for p, o in zip(perf, ours, strict=True)), target="≤ 2×"),
    ]
    bench.say(f"produce: perf tool {figures[0].median:,.0f}/s, nbstream {figures[1].median:,.0f}/s"
              f" ({size} B records), ratio {figures[2].median:.2f}")
    return figures
