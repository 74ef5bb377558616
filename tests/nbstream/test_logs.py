"""The log line an operator reads carries the fields the code logged with ``extra=``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from nbstream.logs import setup_logging


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """Return what the root handler wrote to stderr so far; restore the root logger after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda: capsys.readouterr().err
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_carry_the_extra_fields(stderr: Callable[[], str]) -> None:
    setup_logging("info", "text", process="sink")
    logging.getLogger("sinks.hook").warning("retrying records", extra={
        "sink": "hook", "records": 3, "error": "Server disconnected: peer closed"})
    line = stderr().strip()
    assert " sink WARNING sinks.hook: retrying records " in line
    assert line.endswith('sink=hook records=3 error="Server disconnected: peer closed"')


def test_text_line_without_extra_fields_is_the_message(stderr: Callable[[], str]) -> None:
    setup_logging("info", "text", process="ingest")
    logging.getLogger("producers").info("listening on %s", "127.0.0.1:8080")
    assert stderr().rstrip("\n").endswith("ingest INFO producers: listening on "
                                                   "127.0.0.1:8080")


def test_json_lines_carry_the_same_fields(stderr: Callable[[], str]) -> None:
    setup_logging("info", "json", process="sink")
    logging.getLogger("sinks.hook").warning("retrying records", extra={"sink": "hook",
                                                                       "records": 3})
    doc = json.loads(stderr())
    assert doc["msg"] == "retrying records" and doc["process"] == "sink"
    assert (doc["sink"], doc["records"], doc["level"]) == ("hook", 3, "warning")


def test_levels_below_the_threshold_are_not_written(stderr: Callable[[], str]) -> None:
    setup_logging("warning", "text", process="sink")
    logging.getLogger("sinks.hook").info("delivered", extra={"records": 1})
    assert stderr() == ""
