"""Source and egress ids are the RFC 4122 uuid5 of their inputs, the same in every release."""

from __future__ import annotations

import random
import uuid

import pytest

from schemas.identity import NBSTREAM_NAMESPACE, egress_id, object_key, source_id


def test_ids_are_pinned() -> None:
    """Ids computed by the first release: receivers deduplicate across upgrades by them."""
    sid = source_id("nb-test", "req-1", "dcim.site:1", "object_created",
                    "2026-11-22T05:00:31.123456+00:00")
    assert sid == "fc3e9a90-987c-52ab-8af8-231389fd3e03"
    assert egress_id(sid, "hook") == "876bf587-1201-5fba-a197-494f760521cd"
    assert source_id("nb", None, "extras.job:", "job_started", "é") == (
        "95e761e8-562b-5467-9405-db76cbd323b0")


@pytest.mark.parametrize("seed", range(5))
def test_ids_match_the_standard_librarys_uuid5(seed: int) -> None:
    """Random names, non-ASCII included, give exactly ``uuid.uuid5``'s text."""
    rng = random.Random(seed)
    alphabet = "abcxyz019:._-|\x1f éü中😀"
    for _ in range(200):
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
                 for _ in range(5)]
        request_id = parts[1] or None
        sid = source_id(parts[0], request_id, parts[2], parts[3], parts[4])
        name = "\x1f".join((parts[0], parts[1], parts[2], parts[3], parts[4]))
        want = uuid.uuid5(NBSTREAM_NAMESPACE, name)
        assert sid == str(want)
        assert uuid.UUID(sid).version == 5
        assert egress_id(sid, parts[3]) == str(uuid.uuid5(want, parts[3]))


def test_object_key() -> None:
    """``<object_type>:<id>``, with an empty id for events about no single object."""
    assert object_key("dcim.device", 7) == "dcim.device:7"
    assert object_key("extras.script", None) == "extras.script:"
