"""The delivered envelope's exact bytes (DESIGN §6): field order, UTC timestamps with
microseconds and "Z", UTF-8 text, and NetBox's payload spliced in as sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from schemas.envelope import envelope, envelope_json
from schemas.records import EventType, SinkRecord

MESSAGE = ('{"event": "updated",  "data": {"name": "caf\\u00e9", '
           '"n": 123456789012345678901234567890}}')
RECORD = SinkRecord(
    source_id="6f1c2a9e-8b7e-5c3d-9a1f-2b3c4d5e6f70",
    source_timestamp=datetime(2026, 11, 22, 1, 0, 31, 52820,
                              tzinfo=timezone(timedelta(hours=-4))),
    source_type=EventType.OBJECT_UPDATED, source_type_docs="https://example.invalid/docs",
    netbox_id="nb-zürich", netbox_version="4.6.8", egress_environment="prod",
    egress_id="0b0a6c7e-1d2e-5f3a-8b4c-5d6e7f8a9b0c", egress_version="0.1.0", sink="hook",
    object_type="dcim.device", object_key="dcim.device:42", message=MESSAGE,
)
EGRESS = datetime(2026, 11, 22, 5, 0, 32, tzinfo=UTC)


def test_envelope_bytes() -> None:
    body = envelope_json(RECORD, EGRESS)
    assert body == (
        '{"version":1,"source_id":"6f1c2a9e-8b7e-5c3d-9a1f-2b3c4d5e6f70",'
        '"source_timestamp":"2026-11-22T05:00:31.052820Z","source_type":"object_updated",'
        '"source_type_docs":"https://example.invalid/docs","netbox_id":"nb-zürich",'
        '"netbox_version":"4.6.8","egress_environment":"prod",'
        '"egress_id":"0b0a6c7e-1d2e-5f3a-8b4c-5d6e7f8a9b0c",'
        '"egress_timestamp":"2026-11-22T05:00:32.000000Z","egress_version":"0.1.0",'
        f'"message":{MESSAGE}}}'
    ).encode()


def test_envelope_json_is_the_envelope() -> None:
    """The spliced bytes parse to the same document as the dict form, big integers included."""
    assert json.loads(envelope_json(RECORD, EGRESS)) == envelope(RECORD, EGRESS)
