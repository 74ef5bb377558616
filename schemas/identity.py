"""Deterministic identity: object keys, source ids and egress ids (DESIGN §3)."""

from __future__ import annotations

import uuid

__all__ = ["NBSTREAM_NAMESPACE", "egress_id", "object_key", "source_id"]

# Fixed namespace so every nbstream deployment derives the same ids from the same inputs.
NBSTREAM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nbstream")


def object_key(object_type: str, object_id: int | None) -> str:
    """Return ``<object_type>:<id>``; events about no single object get an empty id."""
    return f"{object_type}:{'' if object_id is None else object_id}"


def source_id(
    netbox_id: str, request_id: str | None, key: str, event_type: str, timestamp: str
) -> str:
    """Return the uuid5 that identifies one NetBox event however often it is delivered."""
    name = "\x1f".join((netbox_id, request_id or "", key, event_type, timestamp))
    return str(uuid.uuid5(NBSTREAM_NAMESPACE, name))


def egress_id(source: str, sink: str) -> str:
    """Return the uuid5 that identifies one event's delivery to one sink."""
    return str(uuid.uuid5(uuid.UUID(source), sink))
