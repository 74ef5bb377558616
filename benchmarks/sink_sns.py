"""Measures the SNS sink's delivered events/s against a local moto server (its own process).

Sends N synthetic records through ``SnsSink`` (open, ``write_batch`` per runner-sized batch,
close) to a fresh standard topic, three runs, and prints the median events/s with min and max.
A delivered event is one PublishBatch entry SNS reported successful (a batch with any failed
entry aborts the run). No SQS queue is subscribed: moto's SQS recomputes the queue's attributes
over every stored message on each send, so with a subscriber the benchmark measures moto's
quadratic fan-out (about 60 events/s here), not the sink; the tests verify fan-out instead.

    .venv/bin/python benchmarks/sink_sns.py [--records 20000] [--batch-size 500]
        [--objects 2000] [--concurrency 16] [--fifo]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.records import SinkRecord  # noqa: E402
from sinks.base import PartialBatchError, SinkContext  # noqa: E402
from sinks.sns import SnsSettings, SnsSink  # noqa: E402
from tests.sinks.records import synthetic_record  # noqa: E402
from tests.sinks.servers.moto_server import (  # noqa: E402
    ACCESS_KEY,
    SECRET_KEY,
    MotoServer,
    moto_server,
)

SINK = "bench"


def make_records(count: int, objects: int) -> list[SinkRecord]:
    """Return ``count`` updates spread round-robin over ``objects`` objects."""
    return [synthetic_record(i % objects + 1, i // objects + 1, SINK) for i in range(count)]


async def run_once(server: MotoServer, records: list[SinkRecord], args: argparse.Namespace,
                   ) -> float:
    """Deliver ``records`` to a fresh topic; return events/s (open and close not timed)."""
    topic = server.create_topic("bench", fifo=args.fifo)
    settings = SnsSettings(topic_arn=topic, endpoint_url=server.endpoint_url,
                           access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                           max_concurrency=args.concurrency, read_timeout=args.read_timeout)
    sink = SnsSink(SINK, settings, SinkContext(environment="bench", sink=SINK))
    await sink.open()
    try:
        started = time.perf_counter()
        for i in range(0, len(records), args.batch_size):
            try:
                await sink.write_batch(records[i:i + args.batch_size])
            except PartialBatchError as err:
                kinds = sorted({str(e) for e in err.failed.values()})
                raise SystemExit(f"{len(err.failed)} records failed: {kinds}") from None
        elapsed = time.perf_counter() - started
    finally:
        await sink.close()
    return len(records) / elapsed


def main() -> None:
    """Parse arguments, run three times against one moto server, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--read-timeout", type=float, default=10.0)
    parser.add_argument("--fifo", action="store_true")
    args = parser.parse_args()
    records = make_records(args.records, args.objects)
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp)) as server:
        rates = [asyncio.run(run_once(server, records, args)) for _ in range(args.runs)]
    print(f"sns sink: {args.records} records, batch {args.batch_size}, {args.objects} objects, "
          f"concurrency {args.concurrency}{', FIFO' if args.fifo else ''}")
    print(f"events/s: median {statistics.median(rates):,.0f} "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}) over {len(rates)} runs")


if __name__ == "__main__":
    main()
