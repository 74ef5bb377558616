"""The benchmark runner behind ``make bench``: every stage on one embedded broker, then the report.

Starts one LocalBroker on free loopback ports in a temporary directory, runs each stage module
(``STAGES``) ``--runs`` times per figure, and writes ``results.json`` (every figure with its
runs, median, min and max, the machine, the date and the load average around each stage) and
the results block of ``performance.md``. ``--quick`` is the smoke version ``make test`` runs:
fewer cases, shorter runs, same code paths.

    .venv/bin/python -m benchmarks.run [--quick] [--only STAGE ...] [--runs N] [--out DIR]

Without ``--out``, results go to ``benchmarks/results.json`` and ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.common import Bench, free_port, loadavg  # noqa: E402
from benchmarks.stats import Figure  # noqa: E402
from nbstream.kafka_local import LocalBroker  # noqa: E402

__all__ = ["STAGES", "main", "run"]

# Stage name -> module; each module has ``run(bench) -> list[Figure]``.
STAGES = {
    "ingest": "benchmarks.ingest",
    "processor": "benchmarks.processor",
    "sinks": "benchmarks.sinks",
    "e2e": "benchmarks.e2e",
    "produce": "benchmarks.produce_limit",
}


def machine() -> dict[str, Any]:
    """Return what the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_mb": mem,
            "python": platform.python_version(), "os": platform.platform(),
            "kafka": "4.3.1 (embedded, single node, KRaft)"}


def run(stages: list[str], runs: int, quick: bool, out: Path,
        broker: LocalBroker | None = None) -> dict[str, Any]:
    """Run ``stages`` on ``broker`` (default: a fresh one, stopped afterwards); write
    ``out/results.json`` and return the results document."""
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "machine": machine(), "quick": quick,
        "runs": runs, "stages": {}, "figures": [],
    }
    with tempfile.TemporaryDirectory(prefix="nbstream-bench-") as tmp_name:
        tmp = Path(tmp_name)
        owned = broker is None
        if broker is None:
            broker = LocalBroker(data_dir=tmp / "kafka", port=free_port(),
                                 controller_port=free_port(), heap="768m")
            broker.start(timeout=120)
        bench = Bench(broker=broker, tmp=tmp, runs=runs, quick=quick)
        try:
            figures: list[Figure] = []
            for name in stages:
                module = importlib.import_module(STAGES[name])
                info: dict[str, Any] = {"loadavg_before": loadavg()}
                t0 = time.monotonic()
                bench.say(f"stage {name} (load average {info['loadavg_before']})")
                try:
                    got = module.run(bench)
                except Exception as err:  # noqa: BLE001 - one broken stage must not hide the rest
                    traceback.print_exc()
                    info["error"] = f"{type(err).__name__}: {err}"
                    got = []
                info.update(loadavg_after=loadavg(), seconds=round(time.monotonic() - t0, 1))
                results["stages"][name] = info
                figures.extend(got)
            figures.extend(report.anchor(figures))
            results["figures"] = [f.as_dict() for f in figures]
        finally:
            if owned:
                broker.stop()
    results["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write results.json and the performance document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short smoke version")
    parser.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--out", type=Path, help="write results.json and performance.md here")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    stages = [s for s in STAGES if not args.only or s in args.only]
    out = args.out or ROOT / "benchmarks"
    doc = (args.out / "performance.md") if args.out else ROOT / "docs" / "performance.md"
    results = run(stages, runs, args.quick, out)
    report.write(doc, results)
    print(f"wrote {out / 'results.json'} and {doc}")
    failed = [name for name, info in results["stages"].items() if "error" in info]
    if failed:
        print(f"stages that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
