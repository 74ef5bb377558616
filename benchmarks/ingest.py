"""Stage (a): ingest's accepted requests/s and latency at 1-64 clients, with 1 and 2 processes.

``nbstream ingest --workers W`` runs as in production (uvicorn, the idempotent acks=all
producer) against the bench broker; ``loadgen`` (Go, its own process) posts the 31 captured
NetBox 4.6.8 webhooks byte for byte with NetBox's own signatures, round-robin, from N
keep-alive clients in a closed loop. A request counts when ingest answered 202, i.e. after the
broker acknowledged the record. Latency is the client's request-to-answer time; CPU per
request is the ingest processes' user + system time over the run divided by its requests.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import (
    Bench,
    background,
    base_config,
    cpu_seconds,
    fixture_templates,
    run_load,
)
from benchmarks.stats import Figure
from tests.conftest import free_port
from tests.e2e.harness import nbstream_processes, wait_ready

__all__ = ["run"]

CLIENTS = (1, 8, 32, 64)
PROCESSES = (1, 2)
FLOOR = (2, 32)  # (processes, clients) of the server-floor case


def run(bench: Bench) -> list[Figure]:
    """Measure every (processes, clients) case ``bench.runs`` times; return the figures."""
    duration, warmup = (1.0, 0.5) if bench.quick else (5.0, 1.0)
    clients = (1, 32) if bench.quick else CLIENTS
    templates = fixture_templates()
    figures: list[Figure] = []
    for processes in PROCESSES:
        tmp = bench.scratch(f"ingest-{processes}")
        config = base_config(bench, bench.prefix(), tmp)
        bench.settings(config)
        port = config["ingest"]["port"]
        url = f"http://127.0.0.1:{port}/webhook"
        with nbstream_processes(config, tmp, ["ingest", "--workers", str(processes)],
                                ingest_port=port) as procs:
            pids = [p.pid for p in procs]
            for n in clients:
                summaries = []
                for _ in range(bench.runs):
                    run_load(url, templates, tmp, concurrency=n, duration=warmup)
                    cpu = cpu_seconds(pids)
                    summary = run_load(url, templates, tmp, concurrency=n, duration=duration)
                    summary["cpu_us"] = (cpu_seconds(pids) - cpu) / summary["requests"] * 1e6
                    if summary["accepted"] != summary["requests"]:
                        raise RuntimeError(f"ingest refused requests: {summary['statuses']}")
                    summaries.append(summary)
                case = f"{processes} process{'es' if processes > 1 else ''}, {n} clients"
                notes = {"processes": processes, "clients": n, "duration_s": duration,
                         "requests": [s["requests"] for s in summaries]}
                target = "≥ 5,000/s (2 processes)" if processes == 2 else ""
                figures.append(Figure("ingest", case, "accepted", "req/s",
                                      tuple(s["accepted_per_s"] for s in summaries),
                                      target=target, notes=notes))
                figures.append(Figure("ingest", case, "CPU per request", "µs",
                                      tuple(s["cpu_us"] for s in summaries), notes=notes))
                for q in ("p50", "p95", "p99"):
                    figures.append(Figure(
                        "ingest", case, f"latency {q}", "ms",
                        tuple(s["latency_ms"][q] for s in summaries),
                        target="≤ 20 ms (32 clients)" if q == "p99" and n == 32 else "",
                        notes=notes))
                bench.say(f"ingest {case}: {figures[-5].median:,.0f} req/s, "
                          f"{figures[-4].median:,.0f} µs CPU per request, "
                          f"p99 {figures[-1].median:.1f} ms")
    figures.extend(server_floor(bench, templates, duration, warmup))
    return figures


def server_floor(bench: Bench, templates: list[dict[str, str]], duration: float,
                 warmup: float) -> list[Figure]:
    """Measure uvicorn answering 202 with no ingest work (``benchmarks.ingest_floor``) with
    FLOOR's processes and clients: the most any Python ingest on this server can do here."""
    processes, clients = FLOOR
    tmp = bench.scratch("ingest-floor")
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook"
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.ingest_floor:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(processes), "--no-access-log", "--log-level",
           "warning"]
    summaries: list[dict[str, Any]] = []
    with background(cmd, tmp / "uvicorn.log") as proc:
        wait_ready(f"http://127.0.0.1:{port}/readyz", [proc])
        for _ in range(bench.runs):
            run_load(url, templates, tmp, concurrency=clients, duration=warmup)
            summaries.append(run_load(url, templates, tmp, concurrency=clients,
                                      duration=duration))
    case = f"server floor (uvicorn, no work), {processes} processes, {clients} clients"
    notes = {"processes": processes, "clients": clients, "duration_s": duration,
             "what": "uvicorn serving an ASGI app that answers 202 at once, no ingest work"}
    figures = [Figure("ingest", case, "accepted", "req/s",
                      tuple(s["accepted_per_s"] for s in summaries), notes=notes)]
    figures += [Figure("ingest", case, f"latency {q}", "ms",
                       tuple(s["latency_ms"][q] for s in summaries), notes=notes)
                for q in ("p50", "p99")]
    bench.say(f"ingest {case}: {figures[0].median:,.0f} req/s, p99 {figures[-1].median:.1f} ms")
    return figures
