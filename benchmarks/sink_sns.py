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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr  # noqa: E402 - after the path setup above

from benchmarks.sinkbench import (  # noqa: E402
    CONTEXT,
    SINK,
    Run,
    open_and_deliver,
    parser,
    print_result,
)
from sinks.sns import SnsSettings, SnsSink  # noqa: E402
from tests.sinks.servers.moto_server import (  # noqa: E402
    ACCESS_KEY,
    SECRET_KEY,
    MotoServer,
    moto_server,
)


async def run_once(server: MotoServer, args: argparse.Namespace) -> Run:
    """Deliver the records to a fresh topic."""
    topic = server.create_topic("bench", fifo=args.fifo)
    settings = SnsSettings(topic_arn=topic, endpoint_url=server.endpoint_url,
                           access_key_id=SecretStr(ACCESS_KEY),
                           secret_access_key=SecretStr(SECRET_KEY),
                           max_concurrency=args.concurrency, read_timeout=args.read_timeout)
    sink = SnsSink(SINK, settings, CONTEXT)
    return await open_and_deliver(sink, args)


def measure(args: argparse.Namespace) -> list[Run]:
    """Start moto, run ``args.runs`` times against it, return the runs."""
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp)) as server:
        return [asyncio.run(run_once(server, args)) for _ in range(args.runs)]


def build_parser() -> argparse.ArgumentParser:
    """Return the options of this benchmark."""
    p = parser(__doc__)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--read-timeout", type=float, default=10.0)
    p.add_argument("--fifo", action="store_true")
    return p


SETUP = "moto server (own process), standard topic, no subscriber, 16 concurrent PublishBatch"


def main() -> None:
    """Parse arguments, measure, print the result."""
    args = build_parser().parse_args()
    print_result("sns sink", measure(args), f"{args.records} records, batch {args.batch_size}, "
                 f"{args.objects} objects, concurrency {args.concurrency}"
                 f"{', FIFO' if args.fifo else ''}")


if __name__ == "__main__":
    main()
