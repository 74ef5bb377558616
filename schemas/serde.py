"""Avro serde for every nbstream topic (DESIGN §5).

Without a registry: Avro single-object encoding (``C3 01`` + 8-byte little-endian CRC-64-AVRO
fingerprint + body); fingerprints of the current and every released schema in ``schemas/`` are
known, so older records resolve to the current reader schema. With ``schema_registry.url``: the
Confluent wire format (``00`` + 4-byte big-endian schema id + body), schemas registered under
``<topic>-value`` (TopicNameStrategy) so Connect, ksqlDB, Flink and Spark read the topics.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.avro import SCHEMA_DIR, SCHEMA_FILES, AvroSchema, load, load_file

__all__ = [
    "AutoSerde",
    "RegistrySerde",
    "SchemaRegistryClientLike",
    "Serde",
    "SerdeError",
    "SingleObjectSerde",
    "make_serde",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class SerdeError(ValueError):
    """A record could not be encoded or decoded."""


class Serde(Protocol):
    """Encodes and decodes one record type on one topic."""

    def encode(self, record: str, datum: dict[str, Any], topic: str) -> bytes:
        """Return the wire bytes of ``datum`` (an Avro ``record``) for ``topic``."""
        ...

    def decode(self, record: str, data: bytes) -> dict[str, Any]:
        """Return the datum in ``record``'s current schema; raise SerdeError."""
        ...


def _body(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    """Return the schemaless Avro encoding of ``datum``."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, schema, datum)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise SerdeError(f"cannot encode record: {err}") from err
    return buf.getvalue()


def _read(data: bytes, offset: int, writer: dict[str, Any], reader: dict[str, Any]) -> Any:
    """Decode the body at ``offset`` written with ``writer`` into ``reader``'s shape."""
    try:
        return schemaless_reader(
            io.BytesIO(data[offset:]), writer, reader if reader is not writer else None
        )
    except Exception as err:  # noqa: BLE001 - fastavro raises many types for bad bytes
        raise SerdeError(f"corrupt Avro body: {type(err).__name__}: {err}") from err


@cache
def _known_writers() -> dict[bytes, AvroSchema]:
    """Return fingerprint -> schema for the current and every released schema."""
    known: dict[bytes, AvroSchema] = {}
    deps = (SCHEMA_DIR / "releases" / "event_type.v1.avsc",)
    for path in sorted((SCHEMA_DIR / "releases").glob("*.avsc")):
        if path.name.startswith("event_type"):
            continue
        s = load_file(path, deps + tuple(sorted((SCHEMA_DIR / "releases").glob("sink_record.*"))))
        known[s.fingerprint] = s
    for name in SCHEMA_FILES:
        s = load(name)
        known[s.fingerprint] = s
    return known


class SingleObjectSerde:
    """Avro single-object encoding with schemas resolved from ``schemas/``."""

    def encode(self, record: str, datum: dict[str, Any], topic: str) -> bytes:
        """Return ``C3 01`` + fingerprint + body."""
        schema = load(record)
        return SINGLE_OBJECT_MAGIC + schema.fingerprint + _body(schema.parsed, datum)

    def decode(self, record: str, data: bytes) -> dict[str, Any]:
        """Decode single-object bytes into ``record``'s current schema."""
        if data[:2] != SINGLE_OBJECT_MAGIC or len(data) < 10:
            raise SerdeError("not Avro single-object encoding (missing C3 01 header)")
        writer = _known_writers().get(data[2:10])
        if writer is None:
            raise SerdeError(f"unknown schema fingerprint {data[2:10].hex()}")
        reader = load(record)
        if writer.name != reader.name:
            raise SerdeError(f"expected {reader.name}, got {writer.name}")
        out: dict[str, Any] = _read(data, 10, writer.parsed, reader.parsed)
        return out


class SchemaRegistryClientLike(Protocol):
    """The two calls RegistrySerde needs from confluent-kafka's SchemaRegistryClient."""

    def register_schema(self, subject_name: str, schema: Any) -> int: ...  # noqa: D102

    def get_schema(self, schema_id: int) -> Any: ...  # noqa: D102


class RegistrySerde:
    """Confluent wire format through a Schema Registry (TopicNameStrategy subjects)."""

    def __init__(self, client: SchemaRegistryClientLike) -> None:
        self._client = client
        self._ids: dict[tuple[str, str], int] = {}
        self._writers: dict[int, dict[str, Any]] = {}

    def _schema_id(self, record: str, topic: str) -> int:
        """Register (once per process) ``record``'s schema under ``<topic>-value``."""
        key = (record, topic)
        if key not in self._ids:
            from confluent_kafka.schema_registry import Schema

            try:
                self._ids[key] = self._client.register_schema(
                    f"{topic}-value", Schema(load(record).text, "AVRO")
                )
            except Exception as err:
                raise SerdeError(f"schema registry refused {record} for {topic}: {err}") from err
        return self._ids[key]

    def encode(self, record: str, datum: dict[str, Any], topic: str) -> bytes:
        """Return ``00`` + schema id + body."""
        schema_id = self._schema_id(record, topic)
        return struct.pack(">bI", CONFLUENT_MAGIC, schema_id) + _body(load(record).parsed, datum)

    def decode(self, record: str, data: bytes) -> dict[str, Any]:
        """Decode Confluent-framed bytes, fetching (and caching) the writer schema by id."""
        if len(data) < 5 or data[0] != CONFLUENT_MAGIC:
            raise SerdeError("not Confluent wire format (missing magic byte 0)")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                text = self._client.get_schema(schema_id).schema_str
            except Exception as err:
                raise SerdeError(f"schema id {schema_id} not in the registry: {err}") from err
            import json

            parsed = cast(dict[str, Any], parse_schema(json.loads(text)))
            writer = self._writers[schema_id] = parsed
        out: dict[str, Any] = _read(data, 5, writer, load(record).parsed)
        return out


class AutoSerde:
    """Encodes with the configured format; decodes whichever of the two formats it is given."""

    def __init__(self, registry: RegistrySerde | None) -> None:
        self._single = SingleObjectSerde()
        self._registry = registry

    def encode(self, record: str, datum: dict[str, Any], topic: str) -> bytes:
        """Encode with the registry when configured, else single-object."""
        target: Serde = self._registry or self._single
        return target.encode(record, datum, topic)

    def decode(self, record: str, data: bytes) -> dict[str, Any]:
        """Decode by the first byte: ``C3`` single-object, ``00`` Confluent."""
        if data[:1] == b"\x00":
            if self._registry is None:
                raise SerdeError("record is in Confluent wire format but no schema_registry.url")
            return self._registry.decode(record, data)
        return self._single.decode(record, data)


def make_serde(registry_url: str | None, client_conf: dict[str, str] | None = None) -> AutoSerde:
    """Return the serde for the configured schema registry (or none)."""
    if not registry_url:
        return AutoSerde(None)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": registry_url, **(client_conf or {})}
    return AutoSerde(RegistrySerde(SchemaRegistryClient(conf)))
