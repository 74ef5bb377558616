"""Measures the Service Bus sink's delivery rate (events/s) against the local AMQP test peer.

The peer (tests/sinks/servers/amqp_peer.py) runs in its own process so it does not share the
GIL with the sink. Each run opens a sink, sends N synthetic records through ``write_batch`` in
runner-sized batches (500 by default), closes it, and checks the peer received all N. The
rate covers the write_batch calls only (open and close excluded). Prints the median of the
runs with min and max.

    .venv/bin/python benchmarks/sink_servicebus.py [--records 20000] [--batch 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402 - after the path setup above

from schemas.records import SinkRecord  # noqa: E402
from sinks.base import SinkContext  # noqa: E402
from sinks.servicebus import ServiceBusSettings, ServiceBusSink  # noqa: E402
from tests.sinks.records import synthetic_record  # noqa: E402

QUEUE = "bench"
SINK = "bench"

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


async def one_run(
    peer: PeerProcess, records: list[SinkRecord], batch: int
) -> tuple[float, float]:
    """Send ``records`` in batches through a fresh sink; return events/s of the sends (wall
    clock) and the sink process's CPU seconds per 1,000 events."""
    conn = (f"Endpoint=sb://127.0.0.1:{peer.port};SharedAccessKeyName=RootManageSharedAccessKey;"
            f"SharedAccessKey={peer.key};UseDevelopmentEmulator=true")
    settings = ServiceBusSettings(connection_string=SecretStr(conn), queue=QUEUE)
    sink = ServiceBusSink(SINK, settings,
                          SinkContext(environment="bench", sink=SINK))
    await sink.open()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), batch):
            await sink.write_batch(records[i:i + batch])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await sink.close()
    return len(records) / elapsed, cpu * 1000 / len(records)


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # 200 objects with several updates each, like a busy NetBox; payloads ~0.4 KB, envelopes ~1 KB.
    records = [synthetic_record(i % 200, i // 200 + 1, SINK) for i in range(args.records)]
    peer = PeerProcess()
    rates, cpus, peer_cpus = [], [], []
    try:
        for _ in range(args.runs):
            peer.ask("clear")
            peer_cpu = float(peer.ask("cpu"))
            rate, cpu = asyncio.run(one_run(peer, records, args.batch))
            peer_cpus.append((float(peer.ask("cpu")) - peer_cpu) * 1000 / len(records))
            rates.append(rate)
            cpus.append(cpu)
            got = int(peer.ask("count"))
            if got != len(records):
                raise SystemExit(f"the peer received {got} of {len(records)} messages")
    finally:
        peer.close()
    print(f"servicebus sink: {statistics.median(rates):,.0f} events/s "
          f"(median of {args.runs}; min {min(rates):,.0f}, max {max(rates):,.0f}; "
          f"{args.records} records, batches of {args.batch}); sink CPU "
          f"{statistics.median(cpus):.2f} s, peer CPU {statistics.median(peer_cpus):.2f} s "
          f"per 1,000 events")


if __name__ == "__main__":
    main()
