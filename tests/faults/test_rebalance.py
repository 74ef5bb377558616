"""Partition revocation under load (issue 4, item 4): a second worker of a sink joins the group
while the first one is busy delivering to a slow destination.

The join revokes some of the first worker's partitions while a batch of them is in flight: the
destination answers every request late, and holds the first worker's answers from the moment
the second worker starts until that one has delivered half a batch (or ``STALL`` seconds
pass), long enough for a runner that lets go of revoked partitions too early to be caught.
The runner must finish the in-flight work within its bound and commit it before the partitions
go, or abandon it uncommitted so the new owner delivers it again (same egress_id) — never keep
delivering records of a partition it no longer owns, or the two workers' deliveries of one
object interleave and its order breaks. Each delivery names its worker in a header, so the test
sees the handoff per object; the workers log their assignments (and what was in flight at a
revocation) as JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from nbstream.kafka_local import LocalBroker
from tests.e2e.harness import Delivery, receiver_server
from tests.faults.pipeline import (
    FaultPipeline,
    Progress,
    Summary,
    WebhookDestination,
    acked_ids,
    assert_sound,
    make_events,
    seeded,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

PARTITIONS = 6
# The destination answers every request this late (after recording it), and the sink keeps at
# most CONNECTIONS requests open: a batch of BATCH records takes seconds.
DELAY = 0.05
CONNECTIONS = 4
BATCH = 200
# The longest the first worker's answers are held at the join; with the runner's 10 s bound on
# in-flight work at a revocation, the held batch can still finish within it.
STALL = 7.0
# Small fetches interleave the partitions in the consumer's queue, so every batch holds records
# of every partition, and so does the one in flight when some of them are revoked.
FETCH_BYTES = 8192
# Each worker process stamps its name on its requests (${...} is expanded from its environment).
WORKER_ENV = "NBSTREAM_TEST_WORKER"
WORKER_HEADER = "x-test-worker"
FIRST, SECOND = "first", "second"
JSON_INFO_LOGS = ("--log-level", "info", "--log-format", "json")


def worker_in(headers: Iterable[tuple[str, str]]) -> str:
    """Return the worker name in a request's headers."""
    return next((v for k, v in headers if k.lower() == WORKER_HEADER), "")


def worker_of(d: Delivery) -> str:
    """Return the name of the worker that made delivery ``d``."""
    return worker_in(d.headers.items())


@pytest.fixture
def slow_hook() -> Iterator[tuple[WebhookDestination, threading.Event]]:
    """A webhook destination that records each request on arrival and answers DELAY s later;
    the sink sends its worker's name in WORKER_HEADER. While the returned event is clear, the
    first worker's answers wait for it."""
    gate = threading.Event()
    gate.set()

    def hold(headers: Mapping[str, str]) -> None:
        time.sleep(DELAY)
        if worker_in(headers.items()) == FIRST:
            gate.wait(60)

    with receiver_server() as (rec, port):
        rec.before_answer = hold
        try:
            yield WebhookDestination(rec, port, settings={
                "max_connections": CONNECTIONS,
                "additional_headers": f"X-Test-Worker: ${{{WORKER_ENV}:-unnamed}}",
            }), gate
        finally:
            gate.set()


def log_events(p: FaultPipeline, stage: str) -> list[dict[str, Any]]:
    """Return the JSON log lines of every run of ``stage``."""
    out = []
    for path in p.stages[stage].logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def ownership(events: list[dict[str, Any]]) -> tuple[set[int], set[int]]:
    """Replay a worker's assignment log: return (partitions it owns now, ones it ever lost)."""
    owned: set[int] = set()
    revoked: set[int] = set()
    for e in events:
        if e.get("msg") == "partitions assigned":
            owned |= set(e["partitions"])
        elif e.get("msg") in ("partitions revoked", "partitions lost"):
            owned -= set(e["partitions"])
            revoked |= set(e["partitions"])
    return owned, revoked


def handoff_violations(deliveries: list[Delivery]) -> list[str]:
    """Return the objects the first worker delivered again after the second one had started
    delivering them: their deliveries interleaved, so their order was not kept."""
    taken: dict[int, int] = {}  # object -> arrival index of the second worker's first delivery
    out = []
    for i, d in enumerate(deliveries):
        obj = int(d.json()["message"]["data"]["id"])
        if worker_of(d) == SECOND:
            taken.setdefault(obj, i)
        elif obj in taken:
            out.append(f"object {obj}: delivery #{i} by the first worker after #{taken[obj]} "
                       "by the second")
    return out


async def test_second_worker_joins_while_a_batch_is_in_flight(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    slow_hook: tuple[WebhookDestination, threading.Event],
    pipelines: Callable[..., FaultPipeline],
    report: Callable[[str, Summary, str], None],
) -> None:
    """A second sink worker joins under load: nothing lost, in-flight work finished within the
    bound or delivered again with its egress_id, per-object order kept across the handoff,
    the first worker alive and both owning partitions at the end."""
    hook, gate = slow_hook
    seed, rnd = seeded()
    p = pipelines(tmp_path, kafka_broker.bootstrap_servers, topic_prefix, hook,
                  partitions=PARTITIONS, batch_size=BATCH)
    p.update("kafka", client={**p.config["kafka"]["client"],
                              "max.partition.fetch.bytes": str(FETCH_BYTES)})
    # Two workers on one host cannot share the metrics port: no /metrics for either.
    p.update("sinks", **{p.sink: {**p.config["sinks"][p.sink], "metrics_port": 0}})
    for stage, worker in (("sink", FIRST), ("sink2", SECOND)):
        p.add_stage(stage, "sink", p.sink, env={WORKER_ENV: worker}, log_args=JSON_INFO_LOGS)
    p.create_topics()
    p.start_all()
    await p.wait_ingest_ready()
    events = make_events(range(1, 201), 10, p.run)
    total = len(events)
    mark = rnd.uniform(0.15, 0.35)
    progress = Progress(p.destination)

    load = asyncio.ensure_future(p.post_load(events))
    try:
        await p.wait_for(lambda: progress.unique() >= mark * total, 240,
                         f"{mark:.0%} delivered by the first worker")
        joined = len(hook.receiver.by_path(hook.path))
        gate.clear()
        p.start("sink2")
        stalled = time.monotonic()
        await p.wait_for(
            lambda: time.monotonic() - stalled > STALL or sum(
                worker_of(d) == SECOND for d in hook.receiver.by_path(hook.path)[joined:]
            ) >= BATCH // 2,
            STALL + 5, "the stall to end")
        gate.set()
        stall = time.monotonic() - stalled
        posted = await load
    finally:
        load.cancel()
    await p.wait_delivered(acked_ids(posted), timeout=180)
    await asyncio.sleep(1.5)  # anything extra (a duplicate) would arrive now
    p.check_alive()  # both workers still run: the first one survived the revocation

    got = hook.receiver.by_path(hook.path)
    after = got[joined:]
    by_first = sum(1 for d in after if worker_of(d) == FIRST)
    by_second = sum(1 for d in after if worker_of(d) == SECOND)
    first_log, second_log = log_events(p, "sink"), log_events(p, "sink2")
    first_owns, first_lost = ownership(first_log)
    second_owns, _ = ownership(second_log)
    revokes = [e for e in first_log if e.get("msg") == "partitions revoked"]
    in_flight = sum(int(e.get("in_flight", 0)) for e in revokes)
    finished = sum(int(e.get("finished", 0)) for e in revokes)
    abandoned = sum(int(e.get("abandoned", 0)) for e in revokes)
    violations = handoff_violations(got)
    s = p.summarize(posted)
    report("rebalance: second sink worker joins under load", s,
           f"seed={seed}, joined at {mark:.0%} delivered, first worker held {stall:.1f}s; "
           f"partitions first={sorted(first_owns)} "
           f"second={sorted(second_owns)}; after the join first={by_first} "
           f"second={by_second} deliveries; revoked with {in_flight} records in flight: "
           f"{finished} finished and committed, {abandoned} abandoned")

    assert s.acknowledged == s.sent == total
    assert_sound(s, p)
    assert not violations, violations[:10]
    assert p.stages["sink"].starts == 1 and p.stages["sink"].kills == 0
    # Both own partitions, between them all, and the second one got what the first lost.
    assert first_owns and second_owns, p.tails()
    assert first_owns | second_owns == set(range(PARTITIONS))
    assert not first_owns & second_owns
    assert first_lost == second_owns
    assert by_first > 0 and by_second > 0
    # The revocation found records of the revoked partitions in flight, and each was either
    # finished and committed before the handoff (so the second worker does not deliver it
    # again) or abandoned to the second worker. Only a cancelled write may have got records
    # through uncommitted (and those of kept partitions are sent again by the first worker).
    assert in_flight > 0, first_log
    assert finished + abandoned == in_flight, revokes
    if not any(e.get("write_cancelled") for e in revokes):
        assert s.duplicates <= abandoned, f"{s.line()}; {revokes}"
