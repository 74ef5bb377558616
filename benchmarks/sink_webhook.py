"""Measures the webhook sink's delivered events/s against a local receiver (its own process).

The receiver is ``loadgen receive`` (Go, benchmarks/loadgen): it answers 200 at once and costs
little CPU, so the figure is the sink's. Each run opens a ``WebhookSink`` (envelope body,
signed, like a NetBox webhook with a secret), sends N synthetic records through ``write_batch``
in runner-sized batches (open and close not timed), and checks the receiver got all N.
``--clients`` also measures the two HTTP clients considered for the sink on plain POSTs of the
same bodies at the sink's concurrency (64): aiohttp (chosen) and httpx.

    .venv/bin/python benchmarks/sink_webhook.py [--records 20000] [--batch-size 500]
        [--objects 2000] [--clients]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402 - after the path setup above
import httpx  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from benchmarks.common import GoReceiver, go_receiver  # noqa: E402
from benchmarks.sinkbench import (  # noqa: E402
    CONTEXT,
    SINK,
    Run,
    make_records,
    open_and_deliver,
    parser,
    print_result,
)
from schemas.envelope import envelope_json  # noqa: E402
from sinks.webhook import WebhookSettings, WebhookSink  # noqa: E402

CONCURRENCY = 64


async def run_once(receiver: GoReceiver, args: argparse.Namespace) -> Run:
    """Deliver the records through a fresh sink; check the receiver got them all."""
    receiver.reset()
    settings = WebhookSettings(payload_url=receiver.url(), secret=SecretStr("bench-secret"),
                               max_connections=CONCURRENCY)
    sink = WebhookSink(SINK, settings, CONTEXT)
    result = await open_and_deliver(sink, args)
    if (got := receiver.count()) != args.records:
        raise SystemExit(f"the receiver got {got} of {args.records} requests")
    return result


async def client_rate(client: str, url: str, bodies: list[bytes]) -> Run:
    """POST ``bodies`` with ``client`` (aiohttp or httpx), 64 at a time; return the rate."""
    queue = list(reversed(bodies))
    started, cpu = time.perf_counter(), time.process_time()
    if client == "aiohttp":
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
            async def worker_aiohttp() -> None:
                while queue:
                    async with s.post(url, data=queue.pop()) as r:
                        await r.read()
            await asyncio.gather(*(worker_aiohttp() for _ in range(CONCURRENCY)))
    else:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(limits=limits) as c:
            async def worker_httpx() -> None:
                while queue:
                    (await c.post(url, content=queue.pop())).read()
            await asyncio.gather(*(worker_httpx() for _ in range(CONCURRENCY)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Run(len(bodies) / elapsed, cpu / len(bodies) * 1e6)


def measure(args: argparse.Namespace) -> list[Run]:
    """Start the receiver, run ``args.runs`` times against it, return the runs."""
    with go_receiver() as receiver:
        return [asyncio.run(run_once(receiver, args)) for _ in range(args.runs)]


def measure_clients(args: argparse.Namespace) -> dict[str, list[Run]]:
    """Return the plain-POST runs of each HTTP client against one receiver (httpx, 50 times
    slower here, gets a tenth of the bodies)."""
    now = datetime.now(UTC)
    bodies = [envelope_json(r, now) for r in make_records(args.records, args.objects)]
    with go_receiver() as receiver:
        share = {"aiohttp": bodies, "httpx": bodies[:max(1, len(bodies) // 10)]}
        return {client: [asyncio.run(client_rate(client, receiver.url(), share[client]))
                         for _ in range(args.runs)] for client in ("aiohttp", "httpx")}


def build_parser() -> argparse.ArgumentParser:
    """Return the options of this benchmark."""
    p = parser(__doc__)
    p.add_argument("--clients", action="store_true", help="also compare the HTTP clients")
    return p


SETUP = "loadgen receive (Go, own process), envelope body, signed, 64 connections"


def main() -> None:
    """Parse arguments, measure, print the result."""
    args = build_parser().parse_args()
    print_result("webhook sink", measure(args), f"{args.records} records, batch {args.batch_size}, "
                 f"{args.objects} objects, {CONCURRENCY} connections")
    if args.clients:
        for client, runs in measure_clients(args).items():
            print_result(f"plain POSTs with {client}", runs, "no sink, same bodies")


if __name__ == "__main__":
    main()
