"""by_object: every object's records reach one sender call in batch order, and no more
objects are in flight than the concurrency allows."""

from __future__ import annotations

import asyncio
import random

import pytest

from schemas.records import SinkRecord
from sinks.ordering import by_object
from tests.sinks.records import synthetic_record


def batch(objects: list[int]) -> list[SinkRecord]:
    """Return one record per entry of ``objects`` (the object id), with per-object seqs."""
    seen: dict[int, int] = {}
    out: list[SinkRecord] = []
    for obj in objects:
        seen[obj] = seen.get(obj, 0) + 1
        out.append(synthetic_record(obj, seen[obj], "s"))
    return out


@pytest.mark.parametrize("concurrency", [1, 3, 64])
async def test_each_object_once_in_order_and_concurrency_bounded(concurrency: int) -> None:
    rng = random.Random(concurrency)
    records = batch([rng.randrange(20) for _ in range(300)])
    calls: list[list[int]] = []
    in_flight = peak = 0

    async def send(indices: list[int]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(rng.random() / 1000)
        calls.append(indices)
        in_flight -= 1

    await by_object(records, concurrency, send)

    objects = {r.object_key for r in records}
    assert sorted(i for call in calls for i in call) == list(range(len(records)))
    assert len(calls) == len(objects)
    for call in calls:
        assert len({records[i].object_key for i in call}) == 1
        assert call == sorted(call)
    assert peak == min(concurrency, len(objects))


async def test_one_at_a_time_takes_objects_in_order_of_first_appearance() -> None:
    records = batch([5, 2, 5, 9, 2, 1])
    order: list[str] = []

    async def send(indices: list[int]) -> None:
        order.append(records[indices[0]].object_key)

    await by_object(records, 1, send)
    assert order == [records[i].object_key for i in (0, 1, 3, 5)]
