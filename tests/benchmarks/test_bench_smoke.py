"""The benchmark runner's smoke version: every stage runs (``--quick``) so the benchmarks cannot
rot. It checks that results of the right shape come out, never how fast anything was."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from nbstream.kafka_local import LocalBroker

# benchmarks/ is a top-level directory of the checkout, not an installed package.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report, run  # noqa: E402

pytestmark = pytest.mark.kafka

# Figures every quick run must produce: (stage, case, metric).
EXPECTED = [
    ("ingest", "2 processes, 32 clients", "accepted"),
    ("ingest", "1 process, 1 clients", "latency p99"),
    ("processor", "1 worker, 100 rules", "events"),
    ("sinks", "webhook", "events"),
    ("sinks", "mqtt", "events"),
    ("e2e", "1,000 events/s", "latency p99"),
    ("e2e", report.E2E_MAX_CASE, "delivered"),
    ("produce", "Kafka ProducerPerformance", "records"),
    ("produce", "perf tool ÷ nbstream producer", "ratio"),
    ("anchor", "e2e delivered ÷ one NetBox RQ worker", "ratio"),
]


def test_quick_run_writes_results_and_report(kafka_broker: LocalBroker, tmp_path: Path) -> None:
    results = run.run(list(run.STAGES), runs=1, quick=True, out=tmp_path, broker=kafka_broker)
    doc = tmp_path / "performance.md"
    report.write(doc, results)

    assert {name: info.get("error") for name, info in results["stages"].items()} == {
        name: None for name in run.STAGES}
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["quick"] is True and written["machine"]["cpus"]
    for info in written["stages"].values():
        assert len(info["loadavg_before"].split()) == 3
    found = {(f["stage"], f["case"], f["metric"]): f for f in written["figures"]}
    for key in EXPECTED:
        assert key in found, key
    for f in written["figures"]:
        assert f["runs"] and all(math.isfinite(v) and v > 0 for v in f["runs"]), f
        assert f["min"] <= f["median"] <= f["max"]
    text = doc.read_text()
    assert report.BEGIN in text and report.END in text
    assert "| e2e | 1,000 events/s | latency p99 |" in text
