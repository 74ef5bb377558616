"""The delivered message every sink sends (DESIGN §6), built from a SinkRecord at egress."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.records import SinkRecord

__all__ = ["envelope", "envelope_json", "format_timestamp"]


def format_timestamp(ts: datetime) -> str:
    """Return ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, the envelope's timestamp format."""
    # isoformat()'s "+00:00" swapped for "Z": a third faster than strftime, twice per record.
    return ts.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _head(record: SinkRecord, egress_timestamp: datetime) -> dict[str, Any]:
    """Return the envelope fields other than ``message``, in the published order."""
    return {
        "version": record.version,
        "source_id": record.source_id,
        "source_timestamp": format_timestamp(record.source_timestamp),
        "source_type": record.source_type.value,
        "source_type_docs": record.source_type_docs,
        "netbox_id": record.netbox_id,
        "netbox_version": record.netbox_version,
        "egress_environment": record.egress_environment,
        "egress_id": record.egress_id,
        "egress_timestamp": format_timestamp(egress_timestamp),
        "egress_version": record.egress_version,
    }


def envelope(record: SinkRecord, egress_timestamp: datetime) -> dict[str, Any]:
    """Return the envelope as a dict with ``message`` decoded."""
    doc = _head(record, egress_timestamp)
    doc["message"] = json.loads(record.message)
    return doc


def envelope_json(record: SinkRecord, egress_timestamp: datetime) -> bytes:
    """Return the envelope as UTF-8 JSON, splicing ``message`` in without re-encoding it.

    The original payload text is already valid JSON (ingest parsed it), so it is embedded as is:
    receivers get NetBox's payload byte for byte and the hot path skips a parse and a dump.
    The other fields are plain strings and an int, which orjson encodes as compact UTF-8 JSON.
    """
    head = orjson.dumps(_head(record, egress_timestamp))
    return b"%b,\"message\":%b}" % (head[:-1], record.message.encode())
