"""Records mirror the .avsc files, and every schema documents itself."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.avro import SCHEMA_DIR, SCHEMA_FILES, load
from schemas.records import DeadLetter, EventType, NetBoxEvent, SinkRecord
from schemas.serde import SingleObjectSerde

NOW = datetime(2026, 11, 22, 5, 0, 31, 52820, tzinfo=UTC)

EVENT = NetBoxEvent(
    source_id="6f1c2a9e-8b7e-5c3d-9a1f-2b3c4d5e6f70", source_timestamp=NOW, ingest_timestamp=NOW,
    event_type=EventType.OBJECT_UPDATED, netbox_event="updated", object_type="dcim.device",
    object_id=42, object_key="dcim.device:42", netbox_id="nb", netbox_version="4.6.8",
    message='{"event": "updated"}', username="admin", request_id="r-1", data='{"id": 42}',
    snapshots='{"prechange": null}', context=None, ingest_source="webhook",
)
RECORD = SinkRecord(
    source_id=EVENT.source_id, source_timestamp=NOW, source_type=EventType.JOB_FAILED,
    source_type_docs="https://example.invalid/docs#job_failed", netbox_id="nb",
    netbox_version="4.6.8", egress_environment="test",
    egress_id="0b0a6c7e-1d2e-5f3a-8b4c-5d6e7f8a9b0c", egress_version="0.1.0", sink="hook",
    object_type="dcim.device", object_key="dcim.device:42", message="{}", rules=("a", "b"),
)
LETTER = DeadLetter(record=RECORD, error_class="permanent", error_type="HTTPStatusError",
                    error_message="400 Bad Request", attempts=3, first_failure=NOW,
                    last_failure=NOW)
SAMPLES: dict[str, Any] = {"NetBoxEvent": EVENT, "SinkRecord": RECORD, "DeadLetter": LETTER}


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_record_fields_are_the_schema_fields(name: str) -> None:
    """The dataclass and its to_dict carry exactly the schema's fields."""
    schema_fields = [f["name"] for f in json.loads((SCHEMA_DIR / SCHEMA_FILES[name])
                                                   .read_text())["fields"]]
    sample = SAMPLES[name]
    assert sorted(f.name for f in dataclasses.fields(sample)) == sorted(schema_fields)
    assert sorted(sample.to_dict()) == sorted(schema_fields)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_records_roundtrip_through_avro(name: str) -> None:
    """Encoding then decoding gives back an equal record, timestamps and enums included."""
    serde = SingleObjectSerde()
    sample = SAMPLES[name]
    decoded = type(sample).from_dict(serde.decode(name, serde.encode(name, sample.to_dict(), "t")))
    assert decoded == sample


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_schema_and_field_is_documented(path: Any) -> None:
    """A namespace and a doc on the schema and on every field (DESIGN §5)."""
    raw = json.loads(path.read_text())
    assert raw["namespace"] == "io.nbstream" and raw["doc"]
    for field in raw.get("fields", []):
        assert field.get("doc"), f"{path.name}: field {field['name']} has no doc"


def test_event_type_enum_matches_the_schema() -> None:
    """The Python enum and the Avro enum have the same symbols and a default."""
    raw = json.loads((SCHEMA_DIR / "event_type.avsc").read_text())
    assert raw["symbols"] == [e.value for e in EventType]
    assert raw["default"] == "unknown"


def test_timestamps_are_micros_and_ids_are_uuids() -> None:
    """Identity and time fields are typed, not strings."""
    fields = {f["name"]: f["type"] for f in json.loads(load("NetBoxEvent").text)["fields"]}
    assert fields["source_timestamp"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["source_id"] == {"type": "string", "logicalType": "uuid"}
