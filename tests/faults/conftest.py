"""Fixtures of the fault suite: the receiver, pipelines that are always stopped, the report line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.harness import Receiver, receiver_server
from tests.faults.pipeline import FaultPipeline, Summary


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    """The destination: the harness Receiver on a real threaded HTTP server; and its port."""
    with receiver_server() as served:
        yield served


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
