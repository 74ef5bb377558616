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
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
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
from sinks.mqtt import MqttSettings, MqttSink  # noqa: E402
from tests.sinks.servers.mosquitto import Mosquitto, Subscriber  # noqa: E402


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


async def publish(broker: Mosquitto, args: argparse.Namespace) -> Run:
    """Deliver the records through a fresh sink (CPU counts the loop's and paho's threads)."""
    settings = MqttSettings(host="127.0.0.1", port=broker.port, qos=args.qos,
                            protocol=args.protocol, max_inflight=args.max_inflight)
    sink = MqttSink(SINK, settings, CONTEXT)
    return await open_and_deliver(sink, args)


def run_once(broker: Mosquitto, args: argparse.Namespace) -> Run:
    """One timed delivery, with the subscriber process checking that everything arrived."""
    if args.no_subscriber:
        return asyncio.run(publish(broker, args))
    ctx = multiprocessing.get_context("spawn")
    ready, received = ctx.Value("i", 0), ctx.Value("i", 0)
    proc = ctx.Process(target=count_messages,
                       args=(broker.port, args.records, ready, received, 300.0))
    proc.start()
    try:
        while not ready.value:
            if not proc.is_alive():
                raise SystemExit("the subscriber process failed to start")
            time.sleep(0.05)
        result = asyncio.run(publish(broker, args))
        proc.join(timeout=120)
    finally:
        if proc.is_alive():
            proc.terminate()
    if received.value != args.records:
        raise SystemExit(f"only {received.value} of {args.records} records arrived")
    return result


def measure(args: argparse.Namespace) -> list[Run]:
    """Start Mosquitto, run ``args.runs`` times against it, return the runs."""
    options = [f"max_inflight_messages {args.receive_maximum}"]
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp), options=options) as broker:
        return [run_once(broker, args) for _ in range(args.runs)]


def build_parser() -> argparse.ArgumentParser:
    """Return the options of this benchmark."""
    p = parser(__doc__)
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--max-inflight", type=int, default=100)
    p.add_argument("--receive-maximum", type=int, default=20)
    p.add_argument("--no-subscriber", action="store_true")
    return p


SETUP = "Mosquitto, QoS 1, MQTT 5, receive maximum 20, subscriber in its own process"


def main() -> None:
    """Parse arguments, measure, print the result."""
    args = build_parser().parse_args()
    print_result("mqtt sink", measure(args), f"{args.records} records, batch {args.batch_size}, "
                 f"{args.objects} objects, QoS {args.qos}, MQTT {args.protocol}, max_inflight "
                 f"{args.max_inflight}, broker receive maximum {args.receive_maximum}, "
                 f"subscriber {'no' if args.no_subscriber else 'QoS 1, own process'}")


if __name__ == "__main__":
    main()
