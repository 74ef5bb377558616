"""Fixtures of the fault suite: the receiver, pipelines that are always stopped, the report line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import receiver_server
from tests.faults.pipeline import FaultPipeline, MqttDestination, Summary, WebhookDestination
from tests.sinks.servers.mosquitto import Mosquitto, Subscriber


@pytest.fixture
def hook() -> Iterator[WebhookDestination]:
    """The webhook destination: the harness Receiver on a real threaded HTTP server."""
    with receiver_server() as (rec, port):
        yield WebhookDestination(rec, port)


@pytest.fixture
def mqtt(tmp_path: Path) -> Iterator[MqttDestination]:
    """The MQTT destination: a real Mosquitto, and a QoS 1 subscriber to ``netbox/#`` that is
    connected before any load starts and stays connected (Mosquitto queues up to 100,000
    messages for it), so it misses no message."""
    with Mosquitto(tmp_path / "mosquitto") as broker, Subscriber(broker.port, qos=1) as sub:
        yield MqttDestination(broker.port, sub)


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
