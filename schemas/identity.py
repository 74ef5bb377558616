"""Deterministic identity: object keys, source ids and egress ids (DESIGN §3)."""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["NBSTREAM_NAMESPACE", "egress_id", "object_key", "source_id"]

# Fixed namespace so every nbstream deployment derives the same ids from the same inputs.
NBSTREAM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nbstream")
_NAMESPACE = NBSTREAM_NAMESPACE.bytes
# uuid5's version (5) and RFC 4122 variant bits, as masks over the 128-bit integer.
_KEEP = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x5000 << 64) | (0x8000 << 48)


def _uuid5(namespace: bytes, name: str) -> str:
    """Return ``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the UUID objects.

    Ingest derives one per request and the processor one per routed record; the standard
    library's object round trip costs twice the SHA-1 it wraps.
    """
    digest = hashlib.sha1(namespace + name.encode("utf-8"), usedforsecurity=False).digest()
    h = "%032x" % (int.from_bytes(digest[:16]) & _KEEP | _SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def object_key(object_type: str, object_id: int | None) -> str:
    """Return ``<object_type>:<id>``; events about no single object get an empty id."""
    return f"{object_type}:{'' if object_id is None else object_id}"


def source_id(
    netbox_id: str, request_id: str | None, key: str, event_type: str, timestamp: str
) -> str:
    """Return the uuid5 that identifies one NetBox event however often it is delivered."""
    name = "\x1f".join((netbox_id, request_id or "", key, event_type, timestamp))
    return _uuid5(_NAMESPACE, name)


def egress_id(source: str, sink: str) -> str:
    """Return the uuid5 that identifies one event's delivery to one sink."""
    return _uuid5(uuid.UUID(source).bytes, sink)
