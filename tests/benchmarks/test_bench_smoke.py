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

from benchmarks import report, run, sinks  # noqa: E402
from benchmarks.stats import Figure  # noqa: E402

pytestmark = pytest.mark.kafka

# Figures every quick run must produce: (stage, case, metric).
EXPECTED = [
    ("ingest", "2 processes, 32 clients", "accepted"),
    ("ingest", "1 process, 1 clients", "latency p99"),
    ("ingest", "server floor (uvicorn, no work), 2 processes, 32 clients", "accepted"),
    ("processor", "1 worker, 100 rules", "events"),
    ("processor", "Faust floor (forward only)", "events"),
    ("processor", "logic only, 100 rules", "events"),
    *(("sinks", name, metric) for name in sinks.MODULES for metric in ("events", "CPU per event")),
    ("sinks", "HTTP client aiohttp (plain POSTs, 64 connections)", "requests"),
    ("e2e", "1,000 events/s", "latency p99"),
    *(("e2e", "1,000 events/s", f"{stage} p99") for stage in ("ingest ack", "processor",
                                                               "sink worker")),
    ("e2e", report.E2E_MAX_CASE, "delivered"),
    ("produce", "Kafka ProducerPerformance", "records"),
    ("produce", "nbstream raw-topic producer", "records"),
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
    assert written == results
    assert written["quick"] is True and written["runs"] == 1 and written["machine"]["cpus"]
    for info in written["stages"].values():
        assert len(info["loadavg_before"].split()) == 3
        assert info["seconds"] > 0
    figures = [Figure.from_dict(f) for f in written["figures"]]
    found = report.index(figures)
    assert len(found) == len(figures), "two figures share (stage, case, metric)"
    assert sorted(k for k in EXPECTED if k not in found) == []
    for f, doc_f in zip(figures, written["figures"], strict=True):
        assert len(f.runs) == written["runs"], f
        assert all(math.isfinite(v) and v > 0 for v in f.runs), f
        assert (doc_f["min"], doc_f["median"], doc_f["max"]) == (
            min(f.runs), f.median, max(f.runs)), f
    # Every target of the report finds its figure: the case names the stages write and the ones
    # the report looks for have not drifted apart.
    assert [t.label for t in report.TARGETS if t.find(found) is None] == []
    text = doc.read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert "not measured" not in text and "**failed**" not in text
    assert "| e2e | 1,000 events/s | latency p99 |" in text
