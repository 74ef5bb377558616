"""The sink contract: the interface every destination implements and the errors it may raise.

A sink connects in ``open`` (failing fast on a bad configuration), delivers one batch per
``write_batch`` call and disconnects in ``close``. It never sleeps, retries or touches offsets:
the runner owns batching, backoff, dead-lettering and commits. Outcomes are reported by type:

- returning normally: every record of the batch was delivered;
- ``RetryableError``: nothing (or nothing known) was delivered, try the whole batch again later;
- ``PermanentError``: no record of the batch can ever be delivered, dead-letter them all;
- ``PartialBatchError``: the indices it names failed (each with its own error), all others
  were delivered.

A sink that keeps per-object order stops sending an object's records after a retryable
failure and reports the ones it held back with the *same* error instance as the record that
failed; the runner retries them in order without counting an attempt against them.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from schemas.records import SinkRecord

__all__ = [
    "PartialBatchError",
    "PermanentError",
    "RetryableError",
    "Sink",
    "SinkConfigError",
    "SinkContext",
    "SinkError",
    "SinkOptions",
]


class SinkError(Exception):
    """Base of every error a sink reports."""


class SinkConfigError(SinkError, ValueError):
    """The sink is misconfigured or its destination is missing or unreachable at start-up."""


class RetryableError(SinkError):
    """A transient failure: the same records may succeed later (timeouts, 5xx, 429, throttling)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SinkError):
    """A failure that retrying cannot fix (4xx, a rejected template, an invalid record)."""


class PartialBatchError(SinkError):
    """Some records of a batch failed; ``failed`` maps their indices in the batch to the error.

    Every index not named was delivered.
    """

    def __init__(self, failed: Mapping[int, RetryableError | PermanentError]) -> None:
        super().__init__(f"{len(failed)} record(s) of the batch failed")
        self.failed: Mapping[int, RetryableError | PermanentError] = MappingProxyType(dict(failed))


class SinkOptions(BaseModel):
    """Base of every sink's own settings: frozen, and unknown keys are configuration errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _utc_now() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may know about the process it runs in, passed explicitly.

    ``environ`` is the only route to environment variables (the webhook ``env`` filter); it is
    empty unless the command layer injects the process environment.
    """

    environment: str
    sink: str
    now: Callable[[], datetime] = _utc_now
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("sinks"))
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


OptionsT = TypeVar("OptionsT", bound=SinkOptions)


class Sink(ABC, Generic[OptionsT]):
    """A destination for SinkRecords; one instance serves one configured sink."""

    type_name: ClassVar[str]
    Settings: ClassVar[type[SinkOptions]]

    def __init__(self, name: str, settings: OptionsT, context: SinkContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context

    @abstractmethod
    async def open(self) -> None:
        """Connect and validate; raise SinkConfigError when the destination cannot be used."""

    @abstractmethod
    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Deliver ``records`` in order; raise Retryable-, Permanent- or PartialBatchError."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call after a failed ``open``."""

    def __repr__(self) -> str:
        """Return the sink's class and name (never its settings, which may hold secrets)."""
        return f"<{type(self).__name__} {self.name!r}>"
