"""Each schema stays backward compatible with its stored previous release (schemas/releases/).

Backward compatible (Confluent's BACKWARD): a reader using the current schema reads data written
with the previous release. Checked by writing random data with the old schema and resolving it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from schemas.avro import SCHEMA_DIR, SCHEMA_FILES, AvroSchema, load_file

RELEASES = SCHEMA_DIR / "releases"


def latest_release(stem: str) -> Path:
    """Return the highest released version of a schema file."""
    versions = sorted(RELEASES.glob(f"{stem}.v*.avsc"),
                      key=lambda p: int(re.search(r"\.v(\d+)\.avsc$", p.name).group(1)))  # type: ignore[union-attr]
    assert versions, f"no release of {stem} in {RELEASES}"
    return versions[-1]


def released(stem: str) -> AvroSchema:
    """Return the latest released schema, with its released dependencies."""
    deps = (latest_release("event_type"), latest_release("sink_record"))
    return load_file(latest_release(stem), deps)


def current(stem: str) -> AvroSchema:
    """Return the current schema from schemas/."""
    return load_file(SCHEMA_DIR / f"{stem}.avsc",
                     (SCHEMA_DIR / "event_type.avsc", SCHEMA_DIR / "sink_record.avsc"))


@pytest.mark.parametrize("stem", [f.removesuffix(".avsc") for f in SCHEMA_FILES.values()])
def test_current_reads_previous_release(stem: str) -> None:
    """200 random records written with the previous release decode with the current schema."""
    old, new = released(stem), current(stem)
    for datum in generate_many(old.parsed, 200):
        buf = io.BytesIO()
        schemaless_writer(buf, old.parsed, datum)
        buf.seek(0)
        schemaless_reader(buf, old.parsed, new.parsed)


def test_an_incompatible_change_is_caught(tmp_path: Path) -> None:
    """The check fails for a new required field without a default (so it can fail at all)."""
    old = released("sink_record")
    text = (SCHEMA_DIR / "sink_record.avsc").read_text().replace(
        '"fields": [', '"fields": [{"name": "added", "type": "string", "doc": "x"},', 1)
    (tmp_path / "sink_record.avsc").write_text(text)
    broken = load_file(tmp_path / "sink_record.avsc", (SCHEMA_DIR / "event_type.avsc",))
    datum = next(iter(generate_many(old.parsed, 1)))
    buf = io.BytesIO()
    schemaless_writer(buf, old.parsed, datum)
    buf.seek(0)
    with pytest.raises(Exception, match="added"):
        schemaless_reader(buf, old.parsed, broken.parsed)
