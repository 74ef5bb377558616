"""Measures the Service Bus sink's delivery rate (events/s) against the local AMQP test peer.

The peer (tests/sinks/servers/amqp_peer.py) runs in its own process so it does not share the
GIL with the sink. Each run opens a sink, sends N synthetic records through ``write_batch`` in
runner-sized batches (500 by default), closes it, and checks the peer received all N. The
rate covers the write_batch calls only (open and close excluded). Prints the median of the
runs with min and max, and the peer's CPU per record.

    .venv/bin/python benchmarks/sink_servicebus.py [--records 20000] [--batch-size 500]
        [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402 - after the path setup above

from benchmarks.sinkbench import (  # noqa: E402
    CONTEXT,
    SINK,
    Run,
    open_and_deliver,
    parser,
    print_result,
)
from sinks.servicebus import ServiceBusSettings, ServiceBusSink  # noqa: E402

QUEUE = "bench"

# The peer process: prints "READY <port> <key>", answers "count" with the number of messages
# received so far and "cpu" with its CPU seconds, and stops at end of input.
PEER = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from tests.sinks.servers.amqp_peer import AmqpPeer
peer = AmqpPeer([{QUEUE!r}]).start()
print("READY", peer.port, peer.key, flush=True)
for line in sys.stdin:
    if line.strip() == "count":
        print(len(peer.received({QUEUE!r})), flush=True)
    elif line.strip() == "cpu":
        print(time.process_time(), flush=True)
    elif line.strip() == "clear":
        peer.clear()
        print("ok", flush=True)
peer.stop()
"""


class PeerProcess:
    """The AMQP peer in a child process, driven over its stdin and stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PEER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"the AMQP peer did not start: {ready}")
        self.port, self.key = int(ready[1]), ready[2]

    def ask(self, command: str) -> str:
        """Send one command line; return the answer line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        """Stop the peer process."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def one_run(peer: PeerProcess, args: argparse.Namespace) -> Run:
    """Send the records in batches through a fresh sink."""
    conn = (f"Endpoint=sb://127.0.0.1:{peer.port};SharedAccessKeyName=RootManageSharedAccessKey;"
            f"SharedAccessKey={peer.key};UseDevelopmentEmulator=true")
    settings = ServiceBusSettings(connection_string=SecretStr(conn), queue=QUEUE)
    sink = ServiceBusSink(SINK, settings, CONTEXT)
    return await open_and_deliver(sink, args)


def measure(args: argparse.Namespace, peer_cpus: list[float] | None = None) -> list[Run]:
    """Start the peer, run ``args.runs`` times, check every message arrived; return the runs
    (and append the peer's CPU µs per record of each run to ``peer_cpus``)."""
    peer = PeerProcess()
    runs = []
    try:
        for _ in range(args.runs):
            peer.ask("clear")
            peer_cpu = float(peer.ask("cpu"))
            runs.append(asyncio.run(one_run(peer, args)))
            if peer_cpus is not None:
                peer_cpus.append((float(peer.ask("cpu")) - peer_cpu) * 1e6 / args.records)
            got = int(peer.ask("count"))
            if got != args.records:
                raise SystemExit(f"the peer received {got} of {args.records} messages")
    finally:
        peer.close()
    return runs


def build_parser() -> argparse.ArgumentParser:
    """Return the options of this benchmark (200 objects with several updates each, like a
    busy NetBox; payloads ~0.4 KB, envelopes ~1 KB)."""
    return parser(__doc__, objects=200)


SETUP = "qpid-proton AMQP 1.0 peer (own process), one queue, every message checked"


def main() -> None:
    """Parse arguments, measure, print the result."""
    args = build_parser().parse_args()
    peer_cpus: list[float] = []
    runs = measure(args, peer_cpus)
    print_result("servicebus sink", runs, f"{args.records} records, batches of {args.batch_size}; "
                 f"peer CPU per record: median {statistics.median(peer_cpus):.0f} µs")


if __name__ == "__main__":
    main()
