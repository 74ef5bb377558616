"""Measures the pubsub sink's delivered events/s against Google's Pub/Sub fake (its own process).

Sends N synthetic records through ``PubSubSink`` (open, ``write_batch`` per runner-sized batch,
close) to a fresh topic on the fake (pstest, built with Go as the tests build it), three runs,
and prints the median events/s with min and max. By default an ordered subscription is attached
and drained afterwards to check every record arrived (draining is not timed).

    .venv/bin/python benchmarks/sink_pubsub.py [--records 20000] [--batch-size 500]
        [--objects 2000] [--max-messages 1000] [--max-concurrency 64] [--no-subscriber]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.records import SinkRecord  # noqa: E402
from sinks.base import PartialBatchError, SinkContext  # noqa: E402
from sinks.pubsub import PubSubSettings, PubSubSink  # noqa: E402
from tests.sinks.records import synthetic_record  # noqa: E402
from tests.sinks.servers.pstest import FakeClients, PsTestServer, build_pstest  # noqa: E402

SINK = "bench"
PROJECT = "nbstream-bench"


def make_records(count: int, objects: int) -> list[SinkRecord]:
    """Return ``count`` updates spread round-robin over ``objects`` objects."""
    return [synthetic_record(i % objects + 1, i // objects + 1, SINK) for i in range(count)]


async def run_once(host: str, clients: FakeClients, records: list[SinkRecord],
                   args: argparse.Namespace) -> float:
    """Deliver ``records`` to a fresh topic; return events/s (open and close not timed)."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    path = f"projects/{PROJECT}/topics/{topic}"
    clients.create_topic(path)
    subscription = None
    if not args.no_subscriber:
        subscription = f"projects/{PROJECT}/subscriptions/{topic}"
        clients.create_subscription(subscription, path)
    settings = PubSubSettings(project=PROJECT, topic=topic, emulator_host=host,
                              max_messages=args.max_messages,
                              max_concurrency=args.max_concurrency)
    sink = PubSubSink(SINK, settings, SinkContext(environment="bench", sink=SINK))
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
    if subscription is not None:
        got = len(clients.pull_all(subscription))
        if got != len(records):
            raise SystemExit(f"only {got} of {len(records)} records arrived")
    clients.delete_topic(path)
    return len(records) / elapsed


def main() -> None:
    """Parse arguments, run against one fake, print the median and range."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--max-messages", type=int, default=PubSubSettings.model_fields[
        "max_messages"].default)
    parser.add_argument("--max-concurrency", type=int, default=PubSubSettings.model_fields[
        "max_concurrency"].default)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-subscriber", action="store_true")
    args = parser.parse_args()

    records = make_records(args.records, args.objects)
    rates = []
    with PsTestServer(build_pstest()) as server:
        clients = FakeClients(server.host)
        try:
            for _ in range(args.runs):
                rates.append(asyncio.run(run_once(server.host, clients, records, args)))
        finally:
            clients.close()
    print(f"pubsub sink: {statistics.median(rates):,.0f} events/s median of {args.runs} "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}); {args.records} records, "
          f"batch {args.batch_size}, {args.objects} objects, max_messages "
          f"{args.max_messages}, max_concurrency {args.max_concurrency}")


if __name__ == "__main__":
    main()
