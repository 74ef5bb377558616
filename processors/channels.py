"""The agent's inputs and outputs as Faust topics, or in-memory channels in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from schemas.config import Settings
from schemas.topics import Topics

__all__ = ["Channels", "kafka_channels"]


@dataclass(frozen=True)
class Channels:
    """Where the agent reads from and writes to; output names are the real topic names."""

    raw: Any
    invalid: Any
    sinks: dict[str, Any]
    names: Topics


def kafka_channels(app: faust.App, settings: Settings) -> Channels:
    """Return the real topics: raw in, invalid and one per enabled sink out (bytes, no codec)."""
    t = Topics(settings.kafka.topic_prefix)

    def topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    return Channels(
        raw=topic(t.raw),
        invalid=topic(t.invalid),
        sinks={name: topic(t.sink(name)) for name in settings.enabled_sinks()},
        names=t,
    )
