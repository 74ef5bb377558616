"""Measures the MQTT sink's delivered events/s against a local Mosquitto (its own process).

Sends N synthetic records through ``MqttSink`` (open, ``write_batch`` per runner-sized batch,
close; a batch returns once the broker acknowledged every message), three runs, and prints the
median events/s with min and max. By default a subscriber to ``netbox/#`` runs in a separate
process (so it does not share the sink's interpreter lock) and must receive every record; its
draining is not timed beyond the sink's own acknowledgements.

    .venv/bin/python benchmarks/sink_mqtt.py [--records 20000] [--batch-size 500]
        [--objects 2000] [--qos 1] [--protocol 5] [--max-inflight 100]
        [--receive-maximum 20] [--no-subscriber]

``--receive-maximum`` is the broker's ``max_inflight_messages`` (Mosquitto's default is 20),
which it announces to MQTT 5 clients as Receive Maximum and which caps the sink's window.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.records import SinkRecord  # noqa: E402
from sinks.base import PartialBatchError, SinkContext  # noqa: E402
from sinks.mqtt import MqttSettings, MqttSink  # noqa: E402
from tests.sinks.records import synthetic_record  # noqa: E402
from tests.sinks.servers.mosquitto import Mosquitto, Subscriber  # noqa: E402

SINK = "bench"


def make_records(count: int, objects: int) -> list[SinkRecord]:
    """Return ``count`` updates spread round-robin over ``objects`` objects."""
    return [synthetic_record(i % objects + 1, i // objects + 1, SINK) for i in range(count)]


def count_messages(port: int, expected: int, ready: Synchronized[int],
                   received: Synchronized[int], timeout: float) -> None:
    """Subscribe to ``netbox/#`` (QoS 1) and count messages until ``expected`` or timeout."""
    with Subscriber(port) as sub:
        ready.value = 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received.value = len(sub.messages())
            if received.value >= expected:
                return
            time.sleep(0.05)


async def deliver(broker: Mosquitto, records: list[SinkRecord], args: argparse.Namespace,
                  ) -> tuple[float, float]:
    """Deliver ``records``; return events/s and this process's CPU µs per record (both
    threads: the event loop's and paho's), open and close not timed."""
    settings = MqttSettings(host="127.0.0.1", port=broker.port, qos=args.qos,
                            protocol=args.protocol, max_inflight=args.max_inflight)
    sink = MqttSink(SINK, settings, SinkContext(environment="bench", sink=SINK))
    await sink.open()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), args.batch_size):
            try:
                await sink.write_batch(records[i:i + args.batch_size])
            except PartialBatchError as err:
                kinds = sorted({str(e) for e in err.failed.values()})
                raise SystemExit(f"{len(err.failed)} records failed: {kinds}") from None
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await sink.close()
    return len(records) / elapsed, cpu / len(records) * 1e6


def run_once(broker: Mosquitto, records: list[SinkRecord], args: argparse.Namespace,
             ) -> tuple[float, float]:
    """One timed delivery, with the subscriber process checking that everything arrived."""
    if args.no_subscriber:
        return asyncio.run(deliver(broker, records, args))
    ctx = multiprocessing.get_context("spawn")
    ready, received = ctx.Value("i", 0), ctx.Value("i", 0)
    proc = ctx.Process(target=count_messages,
                       args=(broker.port, len(records), ready, received, 300.0))
    proc.start()
    try:
        while not ready.value:
            if not proc.is_alive():
                raise SystemExit("the subscriber process failed to start")
            time.sleep(0.05)
        result = asyncio.run(deliver(broker, records, args))
        proc.join(timeout=120)
    finally:
        if proc.is_alive():
            proc.terminate()
    if received.value != len(records):
        raise SystemExit(f"only {received.value} of {len(records)} records arrived")
    return result


def main() -> None:
    """Parse arguments, run three times against one Mosquitto, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    parser.add_argument("--max-inflight", type=int, default=100)
    parser.add_argument("--receive-maximum", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-subscriber", action="store_true")
    args = parser.parse_args()
    records = make_records(args.records, args.objects)
    options = [f"max_inflight_messages {args.receive_maximum}"]
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp), options=options) as broker:
        results = [run_once(broker, records, args) for _ in range(args.runs)]
    rates, cpus = [r for r, _ in results], [c for _, c in results]
    print(f"mqtt sink: {args.records} records, batch {args.batch_size}, {args.objects} objects, "
          f"QoS {args.qos}, MQTT {args.protocol}, max_inflight {args.max_inflight}, broker "
          f"receive maximum {args.receive_maximum}, subscriber "
          f"{'no' if args.no_subscriber else 'QoS 1, own process'}")
    print(f"events/s: median {statistics.median(rates):,.0f} "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}) over {len(rates)} runs; "
          f"sink CPU per record: median {statistics.median(cpus):.0f} µs")


if __name__ == "__main__":
    main()
