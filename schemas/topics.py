"""Topic names; the only place they are spelled (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under a configurable prefix (default ``netbox.``)."""

    prefix: str = "netbox."

    @property
    def raw(self) -> str:
        """Normalised NetBox events, Avro ``NetBoxEvent``."""
        return f"{self.prefix}events.raw"

    @property
    def invalid(self) -> str:
        """Records the processor could not decode, raw bytes plus error headers."""
        return f"{self.prefix}events.invalid"

    def sink(self, name: str) -> str:
        """Records routed to sink ``name``, Avro ``SinkRecord``."""
        return f"{self.prefix}sink.{name}"

    def dlq(self, name: str) -> str:
        """Dead letters of sink ``name``, Avro ``DeadLetter``."""
        return f"{self.prefix}dlq.{name}"

    def processor_group(self) -> str:
        """Consumer group (Faust app id) of the processor."""
        return f"{self.prefix}processor"

    def sink_group(self, name: str) -> str:
        """Consumer group of sink ``name``'s workers."""
        return f"{self.prefix}sink.{name}"
