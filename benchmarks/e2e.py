"""Stage (d): end to end, webhook accepted by ingest -> delivered at the receiver.

The job is NetBox's baseline job (../shared/baselines/netbox-rq.md): ``ipam.ipaddress``
creations, one rule (``ipam.ipaddress``, ``object_created``) -> one webhook sink sending
NetBox's own body, signed. ``loadgen`` (Go) posts the captured IP-address creations, each made a
new object with its own request id and signed, to ``nbstream ingest`` (1 process); the
processor and the sink worker run as in production; ``loadgen receive`` (Go) is the receiver.

Latency of an event = its arrival at the receiver - the moment ingest's 202 reached the client
(both clocks are this host's). Delivered/s = events delivered / (last arrival - start of load).
Cases: open loop at 100 and 1,000 events/s, and closed loop with 64 clients (the highest rate
the pipeline sustains: ingest accepts as fast as it can, the figure is what got delivered).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Bench,
    GoReceiver,
    base_config,
    cpu_seconds,
    go_receiver,
    read_arrivals,
    run_load,
    unique_templates,
)
from benchmarks.report import E2E_MAX_CASE
from benchmarks.stats import Figure, percentile
from tests.e2e.harness import assert_alive, nbstream_processes

__all__ = ["run"]

SINK = "hook"


def config(bench: Bench, tmp: Path, receiver: GoReceiver) -> dict[str, Any]:
    """Return the one-rule webhook pipeline's config."""
    cfg = base_config(bench, bench.prefix(), tmp)
    cfg["sinks"] = {SINK: {"type": "webhook", "payload_url": receiver.url(), "body": "netbox",
                           "secret": "receiver-secret"}}
    cfg["rules"] = [{"name": "ip-created", "object_types": ["ipam.ipaddress"],
                     "event_types": ["object_created"], "sinks": [SINK]}]
    return cfg


def one_load(url: str, receiver: GoReceiver, procs: list[Any], tmp: Path,
             **load: Any) -> dict[str, float]:
    """Run one load against the pipeline, wait for its deliveries; return the figures."""
    receiver.reset()
    accepted_file = tmp / "accepted.txt"
    pids = [p.pid for p in procs]
    started_ns = time.time_ns()
    cpu0 = cpu_seconds(pids)
    summary = run_load(url, unique_templates("ipam.ipaddress", "created"), tmp, unique=True,
                       objects=1_000_000, accepted=accepted_file, **load)
    accepted = read_arrivals(accepted_file.read_text())
    assert_alive(procs)
    got = receiver.wait_for(len(accepted), timeout=60 + len(accepted) / 200)
    cpu = cpu_seconds(pids) - cpu0
    arrivals = receiver.arrivals()
    missing = set(accepted) - set(arrivals)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(accepted)} accepted events were not "
                           f"delivered (receiver got {got})")
    latencies = [(arrivals[sid] - at) / 1e6 for sid, at in accepted.items()]
    last = max(arrivals[sid] for sid in accepted)
    return {"delivered": len(accepted) / ((last - started_ns) / 1e9),
            "accepted": summary["accepted_per_s"],
            "latency p50": percentile(latencies, 50), "latency p95": percentile(latencies, 95),
            "latency p99": percentile(latencies, 99),
            "CPU per event": cpu / len(accepted) * 1e6}


def run(bench: Bench) -> list[Figure]:
    """Measure each load case ``bench.runs`` times on one running pipeline."""
    seconds = 2.0 if bench.quick else 10.0
    cases: list[tuple[str, dict[str, Any]]] = [
        ("100 events/s", {"rate": 100, "concurrency": 8, "duration": seconds}),
        ("1,000 events/s", {"rate": 1000, "concurrency": 32, "duration": seconds}),
        (E2E_MAX_CASE, {"concurrency": 64, "duration": seconds / 2}),
    ]
    if bench.quick:
        cases = cases[1:]
    figures: list[Figure] = []
    tmp = bench.scratch("e2e")
    with go_receiver() as receiver:
        cfg = config(bench, tmp, receiver)
        bench.settings(cfg)
        port = cfg["ingest"]["port"]
        url = f"http://127.0.0.1:{port}/webhook"
        with nbstream_processes(cfg, tmp, ["ingest"], ["process"], ["sink", SINK],
                                ingest_port=port) as procs:
            # Warm up: group assignment, connections, the JIT of the broker.
            one_load(url, receiver, procs, tmp, rate=200, concurrency=8,
                     duration=1.0 if bench.quick else 3.0)
            for case, load in cases:
                runs = [one_load(url, receiver, procs, tmp, **load)
                        for _ in range(bench.runs)]
                notes = {**load, "ingest_processes": 1, "rule": "ipam.ipaddress created",
                         "accepted_per_s": [r["accepted"] for r in runs]}
                for metric, unit in (("delivered", "events/s"), ("latency p50", "ms"),
                                     ("latency p95", "ms"), ("latency p99", "ms"),
                                     ("CPU per event", "µs")):
                    target = ""
                    if case == E2E_MAX_CASE and metric == "delivered":
                        target = "≥ 5,000/s"
                    elif case == "1,000 events/s" and metric == "latency p99":
                        target = "≤ 100 ms"
                    figures.append(Figure("e2e", case, metric, unit,
                                          tuple(r[metric] for r in runs), target=target,
                                          notes=notes))
                bench.say(f"e2e {case}: {figures[-5].median:,.0f} delivered/s, p99 "
                          f"{figures[-2].median:,.1f} ms")
    return figures
