"""The ``file`` sink (local demo): appends one envelope JSON document per line to a file.

Each batch is written with one ``write`` and made durable with ``fsync`` before
``write_batch`` returns, so the runner commits only lines that are on disk. A failed write is
undone by truncating the file back to its previous length, so a retry never leaves half a line.
The blocking I/O runs in a worker thread, once per batch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from schemas.envelope import envelope_json
from schemas.records import SinkRecord
from sinks.base import RetryableError, Sink, SinkConfigError, SinkContext, SinkOptions

__all__ = ["FileSettings", "FileSink"]


class FileSettings(SinkOptions):
    """A file sink's own settings."""

    path: Path = Field(description="File the envelopes are appended to; its directory must exist.")


class FileSink(Sink[FileSettings]):
    """Appends envelopes as JSON lines to a local file."""

    type_name = "file"
    Settings = FileSettings

    def __init__(self, name: str, settings: FileSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._fd: int | None = None

    async def open(self) -> None:
        """Open the file for appending; raise SinkConfigError if it cannot be written."""
        path = self.settings.path
        where = f"sinks.{self.name}.path"
        if not path.parent.is_dir():
            raise SinkConfigError(f"{where}: directory {path.parent} does not exist")
        if path.is_dir():
            raise SinkConfigError(f"{where}: {path} is a directory")
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise SinkConfigError(f"{where}: cannot open {path}: {err.strerror}") from None

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Append the batch and fsync it; raise RetryableError on an I/O error."""
        if not records:
            return
        if self._fd is None:
            raise RetryableError("file sink is not open")
        now = self.context.now()
        data = b"".join(envelope_json(r, now) + b"\n" for r in records)
        await asyncio.to_thread(self._append, self._fd, data)

    @staticmethod
    def _append(fd: int, data: bytes) -> None:
        """Write ``data`` and fsync, restoring the previous length if that fails."""
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # the original error is what the runner must see
            raise RetryableError(f"cannot write: {err.strerror or err}") from None

    async def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
