"""Loads the ``.avsc`` files: parsed schemas, canonical forms and CRC-64-AVRO fingerprints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = ["SCHEMA_DIR", "SCHEMA_FILES", "AvroSchema", "load", "load_file"]

SCHEMA_DIR = Path(__file__).resolve().parent

# Record name -> file; EventType is a named type the records reference.
SCHEMA_FILES: dict[str, str] = {
    "NetBoxEvent": "netbox_event.avsc",
    "SinkRecord": "sink_record.avsc",
    "DeadLetter": "dead_letter.avsc",
}
_DEPENDENCIES = ("event_type.avsc", "sink_record.avsc")


@dataclass(frozen=True)
class AvroSchema:
    """One schema, ready to encode, decode, fingerprint and register."""

    name: str
    parsed: dict[str, Any]
    text: str
    fingerprint: bytes

    @property
    def canonical(self) -> str:
        """The Parsing Canonical Form (what the fingerprint is computed over)."""
        return str(to_parsing_canonical_form(self.parsed))


def _inline(node: Any, named: dict[str, Any], defined: set[str]) -> Any:
    """Replace references to named types by their definition at first use (Avro's rule)."""
    if isinstance(node, str) and node in named:
        if node in defined:
            return node
        defined.add(node)
        return _inline(named[node], named, defined)
    if isinstance(node, list):
        return [_inline(n, named, defined) for n in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            defined.add(f"{node.get('namespace', '')}.{node['name']}".lstrip("."))
        return {k: _inline(v, named, defined) if k in ("type", "fields", "items", "values")
                else v for k, v in node.items()}
    return node


def load_file(path: Path, dependencies: tuple[Path, ...] = ()) -> AvroSchema:
    """Parse ``path`` into a self-contained schema, inlining named types from ``dependencies``."""
    named: dict[str, Any] = {}
    for dep in dependencies:
        if dep != path:
            d = json.loads(dep.read_text("utf-8"))
            named[f"{d['namespace']}.{d['name']}"] = d
    raw = _inline(json.loads(path.read_text("utf-8")), named, set())
    parsed = cast(dict[str, Any], parse_schema(raw))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    return AvroSchema(name=str(raw["name"]), parsed=parsed, text=json.dumps(raw), fingerprint=fp)


@cache
def load(name: str) -> AvroSchema:
    """Return the current schema for record ``name`` (NetBoxEvent, SinkRecord, DeadLetter)."""
    deps = tuple(SCHEMA_DIR / d for d in _DEPENDENCIES)
    return load_file(SCHEMA_DIR / SCHEMA_FILES[name], deps)
