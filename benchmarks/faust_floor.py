"""Faust's own ceiling: an agent that forwards every raw record unchanged to the ``bench`` sink
topic, built with the processor's app settings (publish on commit, acks=all, 50 ms commits) and
nothing of nbstream's per-event work (no decode, no rules, no dedup, no metrics).

Its rate next to the processor's shows how much of the processor's cost is the framework's.

    python -m benchmarks.faust_floor CONFIG.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import faust

from nbstream.loader import load
from processors.app import create_app
from processors.channels import kafka_channels


def main() -> None:
    """Run the forwarding agent until SIGTERM."""
    settings = load(Path(sys.argv[1]))
    app = create_app(settings)
    channels = kafka_channels(app, settings)
    out = channels.sinks["bench"]

    @app.agent(channels.raw, name="forward", concurrency=1)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await out.send(key=event.key, value=event.value)

    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None  # as processors.worker does: no DEBUG root logger
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
