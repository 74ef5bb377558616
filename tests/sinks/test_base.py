"""The sink contract's value types: errors, the context, the abstract interface."""

from __future__ import annotations

import pytest

from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkError,
    SinkOptions,
)


def test_partial_batch_error_names_failed_indices_read_only() -> None:
    """The failed mapping is a snapshot the runner can trust."""
    failed: dict[int, RetryableError | PermanentError] = {2: PermanentError("bad")}
    err = PartialBatchError(failed)
    failed[3] = RetryableError("later")
    assert list(err.failed) == [2]
    with pytest.raises(TypeError):
        err.failed[4] = PermanentError("x")  # type: ignore[index]


def test_error_hierarchy() -> None:
    """Every sink error is a SinkError; config errors are also ValueErrors (for the loader)."""
    assert issubclass(SinkConfigError, SinkError) and issubclass(SinkConfigError, ValueError)
    assert RetryableError("slow", retry_after=3).retry_after == 3
    assert RetryableError("slow").retry_after is None
    assert all(issubclass(e, SinkError) for e in (RetryableError, PermanentError,
                                                  PartialBatchError))


def test_context_defaults() -> None:
    """The default clock is timezone-aware UTC and the environment mapping is empty."""
    ctx = SinkContext(environment="prod", sink="a")
    offset = ctx.now().utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert dict(ctx.environ) == {}


def test_sink_is_abstract_and_options_forbid_extras() -> None:
    """A sink must implement the three methods; sink settings reject unknown keys."""
    with pytest.raises(TypeError):
        Sink("a", SinkOptions(), SinkContext(environment="e", sink="a"))  # type: ignore[abstract]
    with pytest.raises(ValueError, match="extra"):
        SinkOptions.model_validate({"unknown": 1})
