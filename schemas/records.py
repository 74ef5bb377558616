"""Records mirroring the ``.avsc`` files as frozen dataclasses with explicit dict conversion."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["OBJECT_EVENTS", "DeadLetter", "EventType", "NetBoxEvent", "SinkRecord"]


class EventType(enum.StrEnum):
    """Canonical event types; ``unknown`` is the Avro reader default for symbols added later."""

    OBJECT_CREATED = "object_created"
    OBJECT_UPDATED = "object_updated"
    OBJECT_DELETED = "object_deleted"
    JOB_STARTED = "job_started"
    JOB_COMPLETED = "job_completed"
    JOB_FAILED = "job_failed"
    JOB_ERRORED = "job_errored"
    UNKNOWN = "unknown"


OBJECT_EVENTS: tuple[EventType, ...] = (
    EventType.OBJECT_CREATED,
    EventType.OBJECT_UPDATED,
    EventType.OBJECT_DELETED,
)


@dataclass(frozen=True, slots=True)
class NetBoxEvent:
    """A normalised NetBox event on the raw topic (schema ``NetBoxEvent``)."""

    source_id: str
    source_timestamp: datetime
    ingest_timestamp: datetime
    event_type: EventType
    netbox_event: str
    object_type: str
    object_id: int | None
    object_key: str
    netbox_id: str
    netbox_version: str
    message: str
    username: str | None = None
    request_id: str | None = None
    data: str | None = None
    snapshots: str | None = None
    context: str | None = None
    ingest_source: str = "webhook"

    def to_dict(self) -> dict[str, Any]:
        """Return the Avro datum for this record."""
        return {
            "source_id": self.source_id,
            "source_timestamp": self.source_timestamp,
            "ingest_timestamp": self.ingest_timestamp,
            "event_type": self.event_type.value,
            "netbox_event": self.netbox_event,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "object_key": self.object_key,
            "netbox_id": self.netbox_id,
            "netbox_version": self.netbox_version,
            "username": self.username,
            "request_id": self.request_id,
            "data": self.data,
            "snapshots": self.snapshots,
            "context": self.context,
            "ingest_source": self.ingest_source,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetBoxEvent:
        """Build the record from a decoded Avro datum."""
        return cls(
            source_id=str(d["source_id"]),
            source_timestamp=d["source_timestamp"],
            ingest_timestamp=d["ingest_timestamp"],
            event_type=EventType(d["event_type"]),
            netbox_event=d["netbox_event"],
            object_type=d["object_type"],
            object_id=d["object_id"],
            object_key=d["object_key"],
            netbox_id=d["netbox_id"],
            netbox_version=d["netbox_version"],
            username=d["username"],
            request_id=d["request_id"],
            data=d["data"],
            snapshots=d["snapshots"],
            context=d["context"],
            ingest_source=d["ingest_source"],
            message=d["message"],
        )


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """An event routed to one sink (schema ``SinkRecord``): the envelope minus egress time."""

    source_id: str
    source_timestamp: datetime
    source_type: EventType
    source_type_docs: str
    netbox_id: str
    netbox_version: str
    egress_environment: str
    egress_id: str
    egress_version: str
    sink: str
    object_type: str
    object_key: str
    message: str
    rules: tuple[str, ...] = field(default_factory=tuple)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Return the Avro datum for this record."""
        return {
            "version": self.version,
            "source_id": self.source_id,
            "source_timestamp": self.source_timestamp,
            "source_type": self.source_type.value,
            "source_type_docs": self.source_type_docs,
            "netbox_id": self.netbox_id,
            "netbox_version": self.netbox_version,
            "egress_environment": self.egress_environment,
            "egress_id": self.egress_id,
            "egress_version": self.egress_version,
            "sink": self.sink,
            "rules": list(self.rules),
            "object_type": self.object_type,
            "object_key": self.object_key,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SinkRecord:
        """Build the record from a decoded Avro datum."""
        return cls(
            version=d["version"],
            source_id=str(d["source_id"]),
            source_timestamp=d["source_timestamp"],
            source_type=EventType(d["source_type"]),
            source_type_docs=d["source_type_docs"],
            netbox_id=d["netbox_id"],
            netbox_version=d["netbox_version"],
            egress_environment=d["egress_environment"],
            egress_id=str(d["egress_id"]),
            egress_version=d["egress_version"],
            sink=d["sink"],
            rules=tuple(d["rules"]),
            object_type=d["object_type"],
            object_key=d["object_key"],
            message=d["message"],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record its sink could not deliver (schema ``DeadLetter``)."""

    record: SinkRecord
    error_class: str
    error_type: str
    error_message: str
    attempts: int
    first_failure: datetime
    last_failure: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the Avro datum for this record."""
        return {
            "record": self.record.to_dict(),
            "error_class": self.error_class,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeadLetter:
        """Build the record from a decoded Avro datum."""
        return cls(
            record=SinkRecord.from_dict(d["record"]),
            error_class=d["error_class"],
            error_type=d["error_type"],
            error_message=d["error_message"],
            attempts=d["attempts"],
            first_failure=d["first_failure"],
            last_failure=d["last_failure"],
        )
