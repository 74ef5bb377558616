"""Fixtures of the fault suite: the receiver, pipelines that are always stopped, the report line."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.harness import Receiver
from tests.faults.pipeline import FaultPipeline, Summary


class _QuietServer(ThreadingHTTPServer):
    """The harness server, minus tracebacks for connections a killed sink worker reset."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection resets; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    """The destination: the harness Receiver on a real threaded HTTP server; and its port."""
    rec = Receiver()
    server = _QuietServer(("127.0.0.1", 0), rec.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pipelines() -> Iterator[Callable[..., FaultPipeline]]:
    """Build FaultPipelines; every stage they started is stopped (by PID) at teardown."""
    built: list[FaultPipeline] = []

    def build(*args: Any, **kwargs: Any) -> FaultPipeline:
        p = FaultPipeline(*args, **kwargs)
        built.append(p)
        return p

    try:
        yield build
    finally:
        for p in built:
            p.stop_all()


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str, Summary, str], None]:
    """Print a test's summary line to the terminal, whatever the capture mode."""

    def emit(label: str, summary: Summary, note: str = "") -> None:
        with capsys.disabled():
            print(f"\n[{label}] {summary.line()}{f'  ({note})' if note else ''}", flush=True)

    return emit
