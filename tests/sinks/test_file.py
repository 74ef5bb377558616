"""The file sink: envelope JSON lines, durable per batch, failing fast and retryably."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sinks.base import RetryableError, Sink, SinkConfigError, SinkContext
from sinks.file import FileSettings, FileSink
from tests.sinks.conformance import CHECKS, ErrorClass
from tests.sinks.records import fixture_records

SINK = "archive"


def file_sink(path: Path | str) -> FileSink:
    """Return an unopened file sink appending to ``path``."""
    return FileSink(SINK, FileSettings(path=Path(path)), SinkContext(environment="test", sink=SINK))


class FileHarness:
    """The conformance harness: a file in a temporary directory; /dev/full as a full disk."""

    sink_name = SINK

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "events.jsonl"

    def make_sink(self) -> Sink[Any]:
        return file_sink(self.path)

    def make_misconfigured_sink(self) -> Sink[Any]:
        return file_sink(self.path.parent / "missing-dir" / "events.jsonl")

    def make_failing_sink(self, error_class: ErrorClass) -> Sink[Any] | None:
        # A full disk is the file sink's only failure, and it may pass: retryable.
        return file_sink("/dev/full") if error_class == "retryable" else None

    async def received(self) -> list[str]:
        if not self.path.exists():
            return []
        return [json.loads(line)["egress_id"] for line in self.path.read_text().splitlines()]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Any, tmp_path: Path) -> None:
    """The file sink passes the checks every sink must pass."""
    if not os.path.exists("/dev/full") and check.__name__ == "check_error_classification":
        pytest.skip("needs /dev/full to simulate a full disk")
    await check(FileHarness(tmp_path))


async def test_appends_envelope_lines(tmp_path: Path) -> None:
    """Each record becomes one envelope line; a second batch appends after the first."""
    records = fixture_records(SINK)
    path = tmp_path / "out.jsonl"
    sink = file_sink(path)
    await sink.open()
    try:
        await sink.write_batch(records[:3])
        await sink.write_batch(records[3:6])
    finally:
        await sink.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["egress_id"] for d in lines] == [r.egress_id for r in records[:6]]
    assert all(d["message"] == json.loads(r.message) for d, r in zip(lines, records, strict=False))


async def test_full_disk_is_retryable() -> None:
    """A write the disk refuses (/dev/full: ENOSPC) raises RetryableError naming the cause."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    sink = file_sink("/dev/full")
    await sink.open()
    try:
        with pytest.raises(RetryableError, match="cannot write: No space left on device"):
            await sink.write_batch(fixture_records(SINK)[:2])
    finally:
        await sink.close()


async def test_open_refuses_a_directory(tmp_path: Path) -> None:
    """A path that is a directory fails fast, naming the key."""
    with pytest.raises(SinkConfigError, match=rf"sinks\.{SINK}\.path"):
        await file_sink(tmp_path).open()
