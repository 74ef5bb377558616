"""Maps sink type names to implementations, imported lazily, and validates a sink's settings.

A sink module is imported only when its type is used, so a deployment needs only the SDKs of
the sinks it configures; a missing SDK is reported with the extra that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.config import SinkSettings
from sinks.base import Sink, SinkConfigError, SinkContext, SinkOptions
from sinks.retry import RetryPolicy, retry_policy_from_options

__all__ = [
    "RUNNER_OPTIONS",
    "SINK_TYPES",
    "SinkType",
    "create_sink",
    "load_sink_class",
    "sink_retry_policy",
    "validate_sink_settings",
]


@dataclass(frozen=True, slots=True)
class SinkType:
    """Where a sink type's class lives, and the package extra that provides its SDK."""

    module: str
    class_name: str
    extra: str | None = None


SINK_TYPES: Mapping[str, SinkType] = {
    "file": SinkType("sinks.file", "FileSink"),
    "mqtt": SinkType("sinks.mqtt", "MqttSink", "mqtt"),
    "pubsub": SinkType("sinks.pubsub", "PubSubSink", "pubsub"),
    "servicebus": SinkType("sinks.servicebus", "ServiceBusSink", "servicebus"),
    "sns": SinkType("sinks.sns", "SnsSink", "sns"),
    "webhook": SinkType("sinks.webhook", "WebhookSink"),
}

# Keys of a sink's section that configure its runner, not the sink itself.
RUNNER_OPTIONS = frozenset({"retry"})


def load_sink_class(type_name: str, where: str = "type") -> type[Sink[Any]]:
    """Return the class of sink ``type_name``; raise SinkConfigError naming ``where``."""
    entry = SINK_TYPES.get(type_name)
    if entry is None:
        known = ", ".join(sorted(SINK_TYPES))
        raise SinkConfigError(f"{where}: unknown sink type {type_name!r}; known types: {known}")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as err:
        hint = f" (pip install 'nbstream[{entry.extra}]')" if entry.extra else ""
        raise SinkConfigError(
            f"{where}: sink type {type_name!r} is not available: {err}{hint}"
        ) from None
    cls: type[Sink[Any]] = getattr(module, entry.class_name)
    return cls


def validate_sink_settings(name: str, settings: SinkSettings) -> SinkOptions:
    """Return sink ``name``'s own settings validated by its type's model.

    Raises SinkConfigError (a ValueError) naming ``sinks.<name>.<field>``, or
    ``sinks.<name>.type`` for an unknown or unavailable type.
    """
    cls = load_sink_class(settings.type, f"sinks.{name}.type")
    options = {k: v for k, v in settings.options.items() if k not in RUNNER_OPTIONS}
    try:
        return cls.Settings.model_validate(options)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"sinks.{name}{'.' + key if key else ''}: {msg}")
        raise SinkConfigError("; ".join(problems)) from None


def sink_retry_policy(name: str, settings: SinkSettings) -> RetryPolicy:
    """Return the retry policy of sink ``name`` (its ``retry`` section over the defaults)."""
    try:
        return retry_policy_from_options(settings.options.get("retry"), f"sinks.{name}.retry")
    except ValueError as err:
        raise SinkConfigError(str(err)) from None


def create_sink(name: str, settings: SinkSettings, context: SinkContext) -> Sink[Any]:
    """Return an unopened sink ``name`` built from its validated settings."""
    options = validate_sink_settings(name, settings)
    cls = load_sink_class(settings.type, f"sinks.{name}.type")
    return cls(name, options, context)
