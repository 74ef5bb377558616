"""Avro single-object encoding and the Confluent wire format, decoded by one AutoSerde."""

from __future__ import annotations

import struct

import pytest

from schemas.avro import load
from schemas.records import NetBoxEvent
from schemas.serde import SerdeError, SingleObjectSerde, make_serde
from tests.schemas.registry_server import registry_server
from tests.schemas.test_records import EVENT, LETTER, RECORD

_EMPTY = 0xC15D213AA4D7A795


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference CRC-64-AVRO (Rabin) fingerprint."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_reference_fingerprint_vector() -> None:
    """The spec's vector: fingerprint64("int") = 8247732601305521295."""
    assert crc64_avro(b'"int"') == 8247732601305521295


@pytest.mark.parametrize("name", ["NetBoxEvent", "SinkRecord", "DeadLetter"])
def test_single_object_header_is_magic_and_le_fingerprint(name: str) -> None:
    """C3 01, then the little-endian CRC-64-AVRO of the Parsing Canonical Form."""
    want = crc64_avro(load(name).canonical.encode()).to_bytes(8, "little")
    sample = {"NetBoxEvent": EVENT, "SinkRecord": RECORD, "DeadLetter": LETTER}[name]
    data = SingleObjectSerde().encode(name, sample.to_dict(), "t")
    assert data[:2] == b"\xc3\x01" and data[2:10] == want


TRUNCATED = b"\xc3\x01" + load("NetBoxEvent").fingerprint + b"\xff"


@pytest.mark.parametrize("bad", [b"", b"\xc3\x01", b"\xc3\x01" + b"\x00" * 8 + b"x", b"{json}",
                                 TRUNCATED])
def test_undecodable_bytes_raise_serde_error(bad: bytes) -> None:
    """Truncated, unknown-fingerprint or garbage records raise SerdeError, nothing else."""
    with pytest.raises(SerdeError):
        make_serde(None).decode("NetBoxEvent", bad)


def test_wrong_record_type_is_refused() -> None:
    """A SinkRecord is not decoded as a NetBoxEvent."""
    serde = make_serde(None)
    data = serde.encode("SinkRecord", RECORD.to_dict(), "t")
    with pytest.raises(SerdeError, match="expected"):
        serde.decode("NetBoxEvent", data)


def test_confluent_wire_format_through_the_registry_client() -> None:
    """With a registry URL: magic 0, the registered id, subject <topic>-value; both decode."""
    with registry_server() as (url, subjects):
        serde = make_serde(url)
        data = serde.encode("NetBoxEvent", EVENT.to_dict(), "netbox.events.raw")
        assert data[0] == 0
        (schema_id,) = struct.unpack(">I", data[1:5])
        assert subjects == {"netbox.events.raw-value": [schema_id]}
        fresh = make_serde(url)  # a reader that has never seen the schema fetches it by id
        assert NetBoxEvent.from_dict(fresh.decode("NetBoxEvent", data)) == EVENT
        single = make_serde(None).encode("NetBoxEvent", EVENT.to_dict(), "t")
        assert fresh.decode("NetBoxEvent", single)["object_key"] == "dcim.device:42"


def test_confluent_record_without_registry_is_a_clear_error() -> None:
    """Confluent-framed bytes with no registry configured say so."""
    with pytest.raises(SerdeError, match="schema_registry.url"):
        make_serde(None).decode("NetBoxEvent", b"\x00\x00\x00\x00\x01abc")
