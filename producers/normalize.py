"""Turns one parsed NetBox webhook payload, of any NetBox 4.x shape, into a ``NetBoxEvent``.

Pure and allocation-light: it runs once per accepted request. The shapes (DESIGN §2):

- NetBox <= 4.3: ``model`` only (``device``); the app label comes from ``data.url``.
- NetBox 4.4: ``object_type`` (``dcim.device``) and ``model``.
- NetBox 4.5-4.6: ``object_type``; ``request`` {id, method, path, user} may be present.
- NetBox 4.7: no ``username`` / ``request_id``; ``request.user`` / ``request.id`` instead.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.config import NetBoxSettings
from schemas.identity import object_key, source_id
from schemas.records import EventType, NetBoxEvent

__all__ = ["NotANetBoxEvent", "compact_json", "normalize"]


class NotANetBoxEvent(ValueError):
    """The payload is JSON but not a NetBox event; the message says precisely why."""


_OBJECT_EVENTS: dict[str, EventType] = {
    "created": EventType.OBJECT_CREATED,
    "updated": EventType.OBJECT_UPDATED,
    "deleted": EventType.OBJECT_DELETED,
}
_OBJECT_EVENT_TYPES = frozenset(_OBJECT_EVENTS.values())
_JOB_STATUS: dict[str, EventType] = {
    "failed": EventType.JOB_FAILED,
    "errored": EventType.JOB_ERRORED,
}

_OBJECT_TYPE = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*")
# The REST URL of an object: /api/<app>/<plural>/<id>/, possibly behind a BASE_PATH or absolute;
# plugin models live under /api/plugins/<plugin base url>/<plural>/<id>/.
_API_URL = re.compile(r"/api/(?:plugins/)?([A-Za-z0-9_-]+)/[A-Za-z0-9_-]+/[^/]+/?(?:[?#].*)?$")

# The fallback for what orjson refuses. ensure_ascii stays on so lone surrogates from
# \ud800-style escapes cannot reach the Avro UTF-8 encoder (they would make the record
# unencodable).
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _show(value: str) -> str:
    """Return ``repr(value)``, shortened: reasons are logged and sent back to the client."""
    return repr(value) if len(value) <= 80 else repr(value[:77]) + "..."


def compact_json(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON; raise RecursionError if it is nested too deeply.

    orjson is 8x faster than the standard library here (ingest encodes data, snapshots and
    context per request); what it refuses (integers beyond 64 bits, lone surrogates, nesting
    deeper than 254) the standard library encodes, ASCII-escaped.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _COMPACT.encode(value).encode("ascii")


def _compact(value: Any) -> str | None:
    """Return ``value`` as compact JSON text, or None when absent."""
    if value is None:
        return None
    try:
        return compact_json(value).decode("utf-8")
    except RecursionError:
        raise NotANetBoxEvent("payload is nested too deeply to store") from None


def _int_id(data: Any) -> int | None:
    """Return ``data.id`` when it is an integer (bool is not), else None."""
    if isinstance(data, dict):
        oid = data.get("id")
        if type(oid) is int:
            return oid
    return None


def _object_type(payload: dict[str, Any]) -> str:
    """Return ``app_label.model`` from ``object_type`` or, before NetBox 4.4, ``model`` + url."""
    ot = payload.get("object_type")
    if ot is None:
        model = payload.get("model")
        if model is None:
            raise NotANetBoxEvent("payload has neither object_type nor model")
        if not isinstance(model, str):
            raise NotANetBoxEvent("model is not a string")
        data = payload.get("data")
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise NotANetBoxEvent(
                f"model {_show(model)} without object_type needs data.url to derive the app label"
            )
        m = _API_URL.search(url)
        if m is None:
            raise NotANetBoxEvent(
                f"cannot derive the app label of model {_show(model)} from data.url {_show(url)}"
            )
        # Plugin URL segments use dashes where app labels use underscores.
        ot = f"{m.group(1).replace('-', '_').lower()}.{model.lower()}"
    elif not isinstance(ot, str):
        raise NotANetBoxEvent("object_type is not a string")
    if _OBJECT_TYPE.fullmatch(ot) is None:
        raise NotANetBoxEvent(f"unknown object type {_show(ot)} (expected app_label.model)")
    return ot


def _status_value(status: Any) -> str | None:
    """Return a job status given as a string or as a NetBox choice ``{"value": ...}``."""
    if isinstance(status, dict):
        status = status.get("value")
    return status.lower() if isinstance(status, str) else None


def _job_end_type(payload: dict[str, Any]) -> EventType:
    """Return job_failed / job_errored if the payload carries such a job status, else completed."""
    # NetBox maps job_completed, job_failed and job_errored all to ``job_ended``. NetBox 4.6
    # sends no job status at all: its ``data`` is the job's log/output/tests, and a log entry's
    # ``status: "failure"`` is a log level, not the job's status, so those stay job_completed.
    # Only an explicit job status counts: ``data.status`` (payloads that carry the Job object),
    # a top-level ``job`` or a ``context.job`` {"status": ...}.
    data = payload.get("data")
    job = payload.get("job")
    context = payload.get("context")
    ctx_job = context.get("job") if isinstance(context, dict) else None
    for holder in (data, job, ctx_job):
        if isinstance(holder, dict):
            status = _status_value(holder.get("status"))
            if status in _JOB_STATUS:
                return _JOB_STATUS[status]
    return EventType.JOB_COMPLETED


def _event_type(event: str, payload: dict[str, Any]) -> EventType:
    """Return the canonical event type of NetBox's ``event`` name."""
    canonical = _OBJECT_EVENTS.get(event)
    if canonical is not None:
        return canonical
    if event == "job_started":
        return EventType.JOB_STARTED
    if event == "job_ended":
        return _job_end_type(payload)
    raise NotANetBoxEvent(
        f"unknown event {_show(event)} (expected created, updated, deleted, job_started, job_ended)"
    )


def _timestamp(raw: str) -> datetime:
    """Return the payload's timestamp as an aware UTC datetime."""
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        raise NotANetBoxEvent(f"timestamp {_show(raw)} is not ISO 8601") from None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise NotANetBoxEvent(f"timestamp {_show(raw)} has no timezone")
    return ts.astimezone(UTC)


def _optional_str(value: Any) -> str | None:
    """Return ``value`` as text, or None when absent."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def normalize(
    payload: dict[str, Any],
    raw_text: str,
    netbox: NetBoxSettings,
    now: datetime,
    *,
    ingest_source: str = "webhook",
) -> NetBoxEvent:
    """Return the NetBoxEvent of ``payload`` (body ``raw_text``); raise NotANetBoxEvent why not."""
    # raw_text travels unchanged as ``message``; ``now`` (aware) becomes ``ingest_timestamp``.
    netbox_event = payload.get("event")
    if not isinstance(netbox_event, str):
        raise NotANetBoxEvent(
            "payload has no event" if netbox_event is None else "event is not a string"
        )
    event_type = _event_type(netbox_event, payload)
    ts_text = payload.get("timestamp")
    if not isinstance(ts_text, str):
        raise NotANetBoxEvent(
            "payload has no timestamp" if ts_text is None else "timestamp is not a string"
        )
    source_ts = _timestamp(ts_text)
    ot = _object_type(payload)
    data = payload.get("data")
    oid = _int_id(data)
    if oid is None and event_type in _OBJECT_EVENT_TYPES:
        # Object events without an id would all share one key and lose per-object order.
        raise NotANetBoxEvent(f"{netbox_event} event has no integer data.id")

    request = payload.get("request")
    if not isinstance(request, dict):
        request = {}
    # NetBox 4.7 dropped the top-level fields in favour of request.user / request.id.
    username = _optional_str(payload.get("username"))
    if username is None:
        username = _optional_str(request.get("user"))
    request_id = _optional_str(payload.get("request_id"))
    if request_id is None:
        request_id = _optional_str(request.get("id"))

    key = object_key(ot, oid)
    return NetBoxEvent(
        # The timestamp string exactly as sent: re-formatting it could change the id.
        source_id=source_id(netbox.id, request_id, key, event_type.value, ts_text),
        source_timestamp=source_ts,
        ingest_timestamp=now,
        event_type=event_type,
        netbox_event=netbox_event,
        object_type=ot,
        object_id=oid,
        object_key=key,
        netbox_id=netbox.id,
        netbox_version=netbox.version,
        message=raw_text,
        username=username,
        request_id=request_id,
        data=_compact(data),
        snapshots=_compact(payload.get("snapshots")),
        context=_compact(payload.get("context")),
        ingest_source=ingest_source,
    )
