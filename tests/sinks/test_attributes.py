"""Routing attributes shared by every sink."""

from __future__ import annotations

from schemas.records import EventType
from sinks.attributes import netbox_event, routing_attributes
from tests.sinks.records import synthetic_record


def test_attributes_name_type_object_instance_and_event() -> None:
    """A record's attributes carry its canonical type, NetBox event name and ids."""
    rec = synthetic_record(7, 1, "hook")
    attrs = routing_attributes(rec)
    assert attrs["source_type"] == rec.source_type.value
    assert attrs["object_type"] == rec.object_type and attrs["object_key"] == rec.object_key
    assert attrs["netbox_id"] == rec.netbox_id and attrs["egress_id"] == rec.egress_id
    assert attrs["event"] == netbox_event(rec.source_type)


def test_netbox_event_names() -> None:
    """Canonical types map back to NetBox's event names; every job end is job_ended."""
    assert netbox_event(EventType.OBJECT_UPDATED) == "updated"
    assert {netbox_event(t) for t in (EventType.JOB_COMPLETED, EventType.JOB_FAILED,
                                      EventType.JOB_ERRORED)} == {"job_ended"}
    assert netbox_event(EventType.UNKNOWN) == "unknown"
