"""Stage (c): each sink's delivered events/s against its local server, and the HTTP clients.

Runs the per-sink benchmarks (``benchmarks/sink_<type>.py``, each also runnable on its own)
with their defaults but 10,000 records (1,000 in ``--quick`` mode). A sink whose server cannot start
here (Go, Mosquitto or qpid-proton missing) is reported as failed, not skipped silently.
"""

from __future__ import annotations

import traceback
from types import ModuleType

from benchmarks import sink_mqtt, sink_pubsub, sink_servicebus, sink_sns, sink_webhook
from benchmarks.common import Bench
from benchmarks.sinkbench import figures
from benchmarks.stats import Figure

__all__ = ["run"]

MODULES: dict[str, ModuleType] = {
    "webhook": sink_webhook, "sns": sink_sns, "pubsub": sink_pubsub,
    "servicebus": sink_servicebus, "mqtt": sink_mqtt,
}


def run(bench: Bench) -> list[Figure]:
    """Measure every sink; return its events/s and CPU per event figures."""
    argv = ["--runs", str(bench.runs), "--records", "1000" if bench.quick else "10000"]
    out: list[Figure] = []
    failed = []
    for name, module in MODULES.items():
        try:
            got = figures(name, module.measure, module.build_parser(), argv, module.SETUP)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - report, then measure the rest
            traceback.print_exc()
            failed.append(f"{name}: {err}")
            continue
        out.extend(got)
        bench.say(f"sink {name}: {got[0].median:,.0f} events/s, {got[1].median:,.0f} µs CPU")
    args = sink_webhook.build_parser().parse_args(argv)
    for client, runs in sink_webhook.measure_clients(args).items():
        out.append(Figure("sinks", f"HTTP client {client} (plain POSTs, 64 connections)",
                          "requests", "req/s", tuple(r.rate for r in runs)))
        bench.say(f"HTTP client {client}: {out[-1].median:,.0f} req/s")
    if failed:
        raise RuntimeError("; ".join(failed))
    return out
