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
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sinkbench import (  # noqa: E402
    CONTEXT,
    SINK,
    Run,
    open_and_deliver,
    parser,
    print_result,
)
from sinks.pubsub import PubSubSettings, PubSubSink  # noqa: E402
from tests.sinks.servers.pstest import (  # type: ignore[attr-defined]  # noqa: E402
    FakeClients,
    PsTestServer,
    build_pstest,
)

# (The ignore: mypy resolves pstest to the pstest/ directory beside pstest.py, Python to the
# module.)
PROJECT = "nbstream-bench"


async def run_once(host: str, clients: FakeClients, args: argparse.Namespace) -> Run:
    """Deliver the records to a fresh topic; check the subscription got them all."""
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
    sink = PubSubSink(SINK, settings, CONTEXT)
    result = await open_and_deliver(sink, args)
    if subscription is not None:
        got = len(clients.pull_all(subscription))
        if got != args.records:
            raise SystemExit(f"only {got} of {args.records} records arrived")
    clients.delete_topic(path)
    return result


def measure(args: argparse.Namespace) -> list[Run]:
    """Start the fake, run ``args.runs`` times against it, return the runs."""
    with PsTestServer(build_pstest()) as server:
        clients = FakeClients(server.host)
        try:
            return [asyncio.run(run_once(server.host, clients, args)) for _ in range(args.runs)]
        finally:
            clients.close()


def build_parser() -> argparse.ArgumentParser:
    """Return the options of this benchmark."""
    p = parser(__doc__)
    fields = PubSubSettings.model_fields
    p.add_argument("--max-messages", type=int, default=fields["max_messages"].default)
    p.add_argument("--max-concurrency", type=int, default=fields["max_concurrency"].default)
    p.add_argument("--no-subscriber", action="store_true")
    return p


SETUP = "pstest (Go, own process), ordered subscription drained and checked afterwards"


def main() -> None:
    """Parse arguments, measure, print the result."""
    args = build_parser().parse_args()
    print_result("pubsub sink", measure(args), f"{args.records} records, batch {args.batch_size}, "
                 f"{args.objects} objects, max_messages {args.max_messages}, max_concurrency "
                 f"{args.max_concurrency}")


if __name__ == "__main__":
    main()
