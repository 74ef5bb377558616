"""Routing metadata every sink exposes natively (SNS/Pub/Sub attributes, Service Bus
application properties, MQTT user properties, topic templates), so subscribers filter
without parsing the body."""

from __future__ import annotations

from schemas.records import EventType, SinkRecord

__all__ = ["netbox_event", "routing_attributes"]

# NetBox's own event names, derived from the canonical type (no need to parse the payload).
_NETBOX_EVENT = {
    EventType.OBJECT_CREATED: "created",
    EventType.OBJECT_UPDATED: "updated",
    EventType.OBJECT_DELETED: "deleted",
    EventType.JOB_STARTED: "job_started",
    EventType.JOB_COMPLETED: "job_ended",
    EventType.JOB_FAILED: "job_ended",
    EventType.JOB_ERRORED: "job_ended",
}


def netbox_event(source_type: EventType) -> str:
    """Return NetBox's event name for a canonical type (``object_created`` -> ``created``)."""
    return _NETBOX_EVENT.get(source_type, source_type.value)


def routing_attributes(record: SinkRecord) -> dict[str, str]:
    """Return the attributes every sink attaches: type, object, instance, event and ids.

    ``netbox_id`` is the NetBox instance id; ``event`` is NetBox's own event name.
    """
    return {
        "source_type": record.source_type.value,
        "object_type": record.object_type,
        "netbox_id": record.netbox_id,
        "event": netbox_event(record.source_type),
        "object_key": record.object_key,
        "egress_id": record.egress_id,
    }
