"""Session fixtures: the real Kafka broker (started once), free ports, isolated topic prefixes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbstream.kafka_local import LocalBroker
from schemas.config import Settings, parse_settings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "netbox" / "webhooks-4.6.8.jsonl"
FIXTURE_SECRET = "fixture-secret"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The real single-node KRaft broker, on free loopback ports, for the whole session."""
    broker = LocalBroker(
        data_dir=tmp_path_factory.mktemp("kafka"),
        port=free_port(),
        controller_port=free_port(),
        heap="768m",
    )
    broker.start(timeout=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to one test, so tests sharing the broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:10]}."


def make_settings(broker: LocalBroker, prefix: str, **sections: Any) -> Settings:
    """Return Settings pointing at the test broker with an isolated topic prefix."""
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic_prefix": prefix,
                  "partitions": 3},
        "netbox": {"id": "nb-test", "version": "4.6.8", "webhook_secrets": [FIXTURE_SECRET]},
        "environment": "test",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_settings(raw, env={})
