"""Structured logging for every nbstream process: human text (the CLI default) or JSON lines.

Both carry the fields passed with ``extra=`` (the sink, the error, how many records): text
appends them as ``key=value``, so the default format loses nothing a JSON shipper would get.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["setup_logging"]

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields passed to the log call with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process and any extra fields."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "msg": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``time process LEVEL logger: message key=value ...`` (values with spaces quoted)."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """Return the message line with the extra fields appended."""
        fields = " ".join(f"{k}={_text(v)}" for k, v in _extra(record).items())
        line = super().formatMessage(record)
        return f"{line} {fields}" if fields else line


def _text(value: Any) -> str:
    """Return ``value`` as one token: quoted (JSON string syntax) when it has spaces or quotes."""
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced after set-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Emit to the current stderr."""
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str = "info", fmt: str = "json", process: str = "nbstream") -> None:
    """Configure the root logger once for this process."""
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(TextFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request client chatter; nbstream logs its own summary of what was sent.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
