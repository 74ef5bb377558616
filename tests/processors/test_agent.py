"""The route agent under Faust's test context, with in-memory channels for its outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import faust

from processors.agents import _await_backlog
from processors.channels import Channels
from processors.publisher import Output
from processors.worker import build_processor
from schemas.config import Settings, parse_settings
from schemas.identity import egress_id
from schemas.records import SinkRecord
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.processors.helpers import event_from_payload, fixture_payloads

SETTINGS = parse_settings({
    "environment": "test",
    "sinks": {"devices": {"type": "file", "path": "var/test-x.jsonl"},
              "all": {"type": "file", "path": "var/test-y.jsonl"}},
    "rules": [
        {"name": "active-devices", "object_types": ["dcim.device"], "sinks": ["devices"],
         "conditions": {"attr": "status.value", "value": "active"}},
        {"name": "everything", "sinks": ["all", "devices"],
         "event_types": ["object_deleted"]},
    ],
}, env={})


def memory_channels(app: faust.App, settings: Settings) -> Channels:
    """Replace every output topic by an in-memory channel (the agent's input is fed by put())."""
    return Channels(raw=app.channel(), invalid=app.channel(),
                    sinks={n: app.channel() for n in settings.enabled_sinks()},
                    names=Topics(settings.kafka.topic_prefix))


class ChannelPublisher:
    """Publishes the agent's outputs to the in-memory channels standing in for their topics."""

    def __init__(self, settings: Settings, channels: Channels) -> None:
        names = channels.names
        self._by_topic = {names.invalid: channels.invalid,
                          **{names.sink(n): ch for n, ch in channels.sinks.items()}}

    async def publish(self, outputs: Sequence[Output]) -> asyncio.Future[None]:
        for out in outputs:
            await self._by_topic[out.topic].send(key=out.key, value=out.value,
                                                 headers=out.headers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def close(self, timeout: float) -> None:
        """Nothing is queued."""


def subscribe(channel: Any) -> Any:
    """Return a subscriber of an in-memory channel (channels only deliver to subscribers)."""
    return channel.__aiter__()


async def drain(subscriber: Any) -> list[Any]:
    """Return everything queued for a channel subscriber."""
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(subscriber.get(), 0.05))
        except TimeoutError:
            return out


async def test_agent_routes_fixture_events_per_sink_in_order() -> None:
    """Every fixture goes in; each sink gets exactly its events, keyed and ordered, once."""
    proc = build_processor(SETTINGS, "9.9.9", channels=memory_channels, publisher=ChannelPublisher,
                           dedup=False)
    serde = make_serde(None)
    events = [event_from_payload(p) for p in fixture_payloads()]
    subs = {name: subscribe(ch) for name, ch in proc.channels.sinks.items()}
    invalid_sub = subscribe(proc.channels.invalid)
    async with proc.agent.test_context() as agent:
        for ev in events:
            await agent.put(key=ev.object_key.encode(),
                            value=serde.encode("NetBoxEvent", ev.to_dict(), "raw"))
        got = {name: await drain(sub) for name, sub in subs.items()}
        invalid = await drain(invalid_sub)
    assert not invalid

    def expected(sink: str) -> list[str]:
        keys = []
        for ev, p in zip(events, fixture_payloads(), strict=True):
            active = p["object_type"] == "dcim.device" and p["data"]["status"]["value"] == "active"
            deleted = p["event"] == "deleted"
            if (sink == "devices" and (active or deleted)) or (sink == "all" and deleted):
                keys.append(ev.object_key)
        return keys

    for sink in ("devices", "all"):
        records = [SinkRecord.from_dict(serde.decode("SinkRecord", m.value)) for m in got[sink]]
        assert [m.key for m in got[sink]] == [k.encode() for k in expected(sink)]
        assert all(r.sink == sink and r.egress_version == "9.9.9" for r in records)
        assert all(r.egress_id == egress_id(r.source_id, sink) for r in records)
    deleted_device = next(SinkRecord.from_dict(serde.decode("SinkRecord", m.value))
                          for m in got["devices"] if m.key == b"dcim.device:3")
    assert deleted_device.rules == ("everything",)
    assert proc.metrics.routed.labels("all")._value.get() == len(expected("all"))


async def test_agent_sends_poison_records_to_invalid_and_continues() -> None:
    """Garbage on the raw topic goes to the invalid channel with headers; the stream goes on."""
    proc = build_processor(SETTINGS, "9.9.9", channels=memory_channels, publisher=ChannelPublisher,
                           dedup=False)
    serde = make_serde(None)
    ev = event_from_payload(fixture_payloads()[-5])  # a delete
    invalid_sub, all_sub = subscribe(proc.channels.invalid), subscribe(proc.channels.sinks["all"])
    async with proc.agent.test_context() as agent:
        await agent.put(key=b"junk", value=b"\x00\x01not avro")
        await agent.put(key=ev.object_key.encode(),
                        value=serde.encode("NetBoxEvent", ev.to_dict(), "raw"))
        invalid = await drain(invalid_sub)
        routed = await drain(all_sub)
    assert [m.value for m in invalid] == [b"\x00\x01not avro"]
    assert "nbstream-error" in dict(invalid[0].headers)
    assert [m.key for m in routed] == [ev.object_key.encode()]
    assert proc.metrics.invalid._value.get() == 1


async def test_busy_agent_waits_for_a_full_batch_or_its_deadline() -> None:
    """After a busy batch the agent waits for the fetcher to queue a full one: it goes on as soon
    as the queue holds that many records, and at the deadline when the input runs dry."""
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def fetcher() -> None:
        for i in range(500):
            queue.put_nowait(i)
            if i % 100 == 99:
                await asyncio.sleep(0)

    feeding = asyncio.ensure_future(fetcher())
    # A deadline far beyond the test's timeout: only a full queue can end the wait in time.
    await asyncio.wait_for(_await_backlog(queue, 500, timeout=3600), timeout=30)
    assert queue.qsize() == 500
    await feeding

    queue = asyncio.Queue()
    queue.put_nowait(1)
    await asyncio.wait_for(_await_backlog(queue, 500, timeout=0.01), timeout=30)
    assert queue.qsize() == 1
