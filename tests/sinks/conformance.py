"""Checks every sink must pass, applied by each sink's test module through a SinkHarness.

A harness knows how to build the sink against a real destination, a misconfigured one and a
failing one, and how to read back what the destination received. A new sink's test module
implements the harness and runs every check in ``CHECKS``:

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check, harness): await check(harness)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

import pytest

from schemas.records import SinkRecord
from sinks.base import PartialBatchError, PermanentError, RetryableError, Sink, SinkConfigError
from tests.sinks.records import synthetic_record

__all__ = [
    "CHECKS",
    "SinkHarness",
    "check_empty_batch_is_noop",
    "check_error_classification",
    "check_open_fails_fast",
    "check_order_kept",
]

ErrorClass = Literal["retryable", "permanent"]


class SinkHarness(Protocol):
    """What a sink's test module provides so the shared checks can run against it."""

    sink_name: str

    def make_sink(self) -> Sink[Any]:
        """Return an unopened sink whose destination accepts everything."""

    def make_misconfigured_sink(self) -> Sink[Any]:
        """Return an unopened sink whose destination is missing or invalid."""

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        """Return an unopened sink whose destination fails every record with that class,
        or None when the sink has no such failure."""

    async def received(self) -> list[str]:
        """Return the egress ids the destination accepted, in the order it accepted them."""


async def _opened(sink: Sink[Any]) -> Sink[Any]:
    """Open ``sink`` and return it."""
    await sink.open()
    return sink


async def check_empty_batch_is_noop(h: SinkHarness) -> None:
    """An empty batch delivers nothing and raises nothing."""
    sink = await _opened(h.make_sink())
    try:
        await sink.write_batch([])
    finally:
        await sink.close()
    assert await h.received() == []


async def check_open_fails_fast(h: SinkHarness) -> None:
    """open() raises SinkConfigError for a missing destination, and close() is still safe."""
    sink = h.make_misconfigured_sink()
    with pytest.raises(SinkConfigError):
        await sink.open()
    await sink.close()


def _failures(err: BaseException, batch: Sequence[SinkRecord]) -> dict[int, BaseException]:
    """Return index -> error for every record ``err`` reports as failed."""
    if isinstance(err, PartialBatchError):
        return dict(err.failed)
    return dict.fromkeys(range(len(batch)), err)


async def check_error_classification(h: SinkHarness) -> None:
    """A failing destination is reported with the right class, for every record of the batch."""
    batch = [synthetic_record(1, 1, h.sink_name), synthetic_record(2, 1, h.sink_name)]
    expected: dict[ErrorClass, type[Exception]] = {
        "retryable": RetryableError, "permanent": PermanentError}
    tried = 0
    for error_class, error_type in expected.items():
        made = h.make_failing_sink(error_class)
        if made is None:
            continue
        tried += 1
        sink = await _opened(made)
        try:
            with pytest.raises((RetryableError, PermanentError, PartialBatchError)) as info:
                await sink.write_batch(batch)
        finally:
            await sink.close()
        failures = _failures(info.value, batch)
        assert sorted(failures) == list(range(len(batch))), error_class
        assert all(isinstance(e, error_type) for e in failures.values()), failures
    assert tried, "a sink must be able to fail in at least one class"
    assert await h.received() == []


async def check_order_kept(h: SinkHarness) -> None:
    """Every record is delivered once, and the records of one object in batch order."""
    batch = [synthetic_record(obj, seq, h.sink_name) for seq in range(1, 5) for obj in (1, 2, 3)]
    sink = await _opened(h.make_sink())
    try:
        await sink.write_batch(batch)
    finally:
        await sink.close()
    got = await h.received()
    assert sorted(got) == sorted(r.egress_id for r in batch)
    for key in {r.object_key for r in batch}:
        sent = [r.egress_id for r in batch if r.object_key == key]
        assert [e for e in got if e in sent] == sent, key


CHECKS: tuple[Callable[[SinkHarness], Awaitable[None]], ...] = (
    check_empty_batch_is_noop,
    check_open_fails_fast,
    check_error_classification,
    check_order_kept,
)
