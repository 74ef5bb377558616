"""The process entry of one sink worker (``nbstream sink NAME``): signals, metrics, exit code.

This is the only place in ``sinks/`` that touches process state: it installs the SIGINT and
SIGTERM handlers, serves ``/metrics`` when the sink has a ``metrics_port``, and injects the
process environment for the webhook ``env`` filter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import suppress

from prometheus_client import CollectorRegistry, start_http_server

from schemas.config import Settings
from sinks.base import SinkConfigError
from sinks.runner import SinkRunner

__all__ = ["EXIT_CONFIG", "EXIT_OK", "run_sink", "serve_sink"]

EXIT_OK = 0
EXIT_CONFIG = 2

log = logging.getLogger(__name__)


async def serve_sink(settings: Settings, name: str, registry: CollectorRegistry) -> None:
    """Run sink ``name`` until SIGINT or SIGTERM; a second signal abandons the shutdown bound.

    Raises SinkConfigError when the sink or its topics cannot be used.
    """
    runner = SinkRunner.from_settings(name, settings, registry=registry, environ=os.environ)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(runner.run())
    signals = (signal.SIGINT, signal.SIGTERM)
    signalled = False

    def on_signal() -> None:
        """First signal: stop cleanly; second: stop waiting for the in-flight batch."""
        nonlocal signalled
        if signalled:
            task.cancel()
        signalled = True
        runner.stop()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        await task
    finally:
        for sig in signals:
            with suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


def run_sink(settings: Settings, name: str, version: str) -> int:
    """Run sink ``name``'s worker in the foreground; return the process exit code."""
    sink_settings = settings.sinks.get(name)
    if sink_settings is None:
        print(f"sinks.{name}: no such sink in the configuration", file=sys.stderr)
        return EXIT_CONFIG
    registry = CollectorRegistry()
    if sink_settings.metrics_port:
        # The sink section has no address of its own; the ingest's listen address is the
        # deployment's choice of interface (loopback locally, all interfaces in a container).
        start_http_server(sink_settings.metrics_port, settings.ingest.host, registry=registry)
    log.info("nbstream %s: sink worker %s starting", version, name)
    try:
        asyncio.run(serve_sink(settings, name, registry))
    except SinkConfigError as err:
        print(f"nbstream sink {name}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except asyncio.CancelledError:
        log.warning("sink worker %s stopped without finishing its in-flight batch", name)
    return EXIT_OK
