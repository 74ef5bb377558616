"""Faust's own ceiling: the processor's agent (the same batches, producer and acknowledgements,
``processors.agents.register_router``) with a per-record step that forwards each raw record
unchanged to the ``bench`` sink topic: no decode, rules, dedup or metrics.

Its rate next to the processor's shows how much of the processor's cost is the framework's.

    python -m benchmarks.faust_floor CONFIG.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import faust

from nbstream.loader import load
from processors.agents import register_router
from processors.app import create_app
from processors.channels import kafka_channels
from processors.publisher import KafkaPublisher, Output, publisher_config


def main() -> None:
    """Run the forwarding agent until SIGTERM."""
    settings = load(Path(sys.argv[1]))
    app = create_app(settings)
    channels = kafka_channels(app, settings)
    topic = channels.names.sink("bench")

    def forward(event: Any, outputs: list[Output]) -> None:
        outputs.append(Output(topic, event.key, event.value, []))

    publisher = KafkaPublisher(publisher_config(settings))
    p = settings.processor
    register_router(app, channels.raw, forward, publisher, p.batch_size, p.batch_linger)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None  # as processors.worker does: no DEBUG root logger
    try:
        worker.execute_from_commandline()
    finally:
        publisher.close(timeout=10)


if __name__ == "__main__":
    main()
