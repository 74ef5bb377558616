"""What every sink benchmark shares: records, the timed delivery loop, arguments and the report.

A sink benchmark (``benchmarks/sink_<type>.py``) starts its local server, then per run opens a
sink, calls ``deliver`` (``write_batch`` per runner-sized batch; open and close not timed) and
checks the server got everything. ``main`` prints the result when a script runs on its own;
``figure`` turns the same runs into the ``sinks`` stage's Figure for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import Figure
from schemas.records import SinkRecord
from sinks.base import PartialBatchError, Sink, SinkContext
from tests.sinks.records import synthetic_record

__all__ = [
    "CONTEXT",
    "SINK",
    "Run",
    "deliver",
    "figures",
    "make_records",
    "open_and_deliver",
    "parser",
    "print_result",
]

SINK = "bench"
CONTEXT = SinkContext(environment="bench", sink=SINK)


@dataclass(frozen=True)
class Run:
    """One timed delivery: events/s (wall clock) and the sink process's CPU µs per record."""

    rate: float
    cpu_us: float


def make_records(count: int, objects: int) -> list[SinkRecord]:
    """Return ``count`` updates spread round-robin over ``objects`` objects."""
    return [synthetic_record(i % objects + 1, i // objects + 1, SINK) for i in range(count)]


async def deliver(sink: Sink[Any], records: Sequence[SinkRecord], batch_size: int) -> Run:
    """Write ``records`` through an open ``sink`` in batches; return the rate and CPU cost.

    Raises SystemExit naming the failures if any record of a batch was not delivered.
    """
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(records), batch_size):
        try:
            await sink.write_batch(records[i:i + batch_size])
        except PartialBatchError as err:
            kinds = sorted({str(e) for e in err.failed.values()})
            raise SystemExit(f"{len(err.failed)} records failed: {kinds}") from None
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Run(len(records) / elapsed, cpu / len(records) * 1e6)


async def open_and_deliver(sink: Sink[Any], args: argparse.Namespace) -> Run:
    """Open ``sink``, deliver ``args.records`` synthetic records over ``args.objects`` objects
    in batches of ``args.batch_size`` (timed), close it; return the run."""
    await sink.open()
    try:
        return await deliver(sink, make_records(args.records, args.objects), args.batch_size)
    finally:
        await sink.close()


def parser(doc: str, records: int = 20_000, objects: int = 2_000) -> argparse.ArgumentParser:
    """Return an argument parser with the options every sink benchmark has."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--records", type=int, default=records)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--objects", type=int, default=objects)
    p.add_argument("--runs", type=int, default=3)
    return p


def print_result(name: str, runs: Sequence[Run], setup: str) -> None:
    """Print the median events/s with min and max, and the median CPU per record."""
    rates = [r.rate for r in runs]
    print(f"{name}: {setup}")
    print(f"events/s: median {statistics.median(rates):,.0f} (min {min(rates):,.0f}, "
          f"max {max(rates):,.0f}) over {len(rates)} runs; sink CPU per record: median "
          f"{statistics.median(r.cpu_us for r in runs):.0f} µs")


def figures(name: str, measure: Callable[[argparse.Namespace], list[Run]],
            build: argparse.ArgumentParser, argv: list[str], setup: str) -> list[Figure]:
    """Run ``measure`` with the script's defaults plus ``argv``; return its two figures."""
    args = build.parse_args(argv)
    runs = measure(args)
    notes = {"records": args.records, "batch_size": args.batch_size, "setup": setup}
    return [Figure("sinks", name, "events", "events/s", tuple(r.rate for r in runs),
                   notes=notes),
            Figure("sinks", name, "CPU per event", "µs", tuple(r.cpu_us for r in runs),
                   notes=notes)]
