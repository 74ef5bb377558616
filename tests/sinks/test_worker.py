"""The sink worker process: runs until SIGTERM, serves /metrics, exits 0; config errors exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import Settings
from sinks.worker import EXIT_CONFIG, run_sink
from tests.conftest import free_port, make_settings
from tests.sinks.records import synthetic_record
from tests.sinks.test_runner import committed, end_offsets, produce

pytestmark = pytest.mark.kafka

ENTRY = ("import sys; from pathlib import Path; from schemas.config import load_settings; "
         "from sinks.worker import run_sink; "
         "sys.exit(run_sink(load_settings(Path(sys.argv[1])), sys.argv[2], 'test'))")


def write_config(path: Path, settings: Settings) -> Path:
    """Write ``settings`` as the YAML file a deployment would have."""
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def metrics(port: int) -> str:
    """Return the worker's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
        return str(r.read().decode())


def test_worker_process_delivers_and_stops_on_sigterm(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """`nbstream sink NAME` in a real process: delivers, exports metrics, commits and exits 0."""
    out = tmp_path / "events.jsonl"
    port = free_port()
    settings = make_settings(kafka_broker, topic_prefix, sinks={"archive": {
        "type": "file", "path": str(out), "metrics_port": port}})
    ensure_topics(settings)
    records = [synthetic_record(obj, seq, "archive") for seq in range(1, 6) for obj in (1, 2)]
    produce(settings, "archive", records)
    config = write_config(tmp_path / "nbstream.yaml", settings)
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, str(config), "archive"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and len(out.read_text().splitlines()) >= len(records)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "records not delivered within 30s"
            time.sleep(0.05)
        page = metrics(port)
        assert f'nbstream_sink_delivered_total{{sink="archive"}} {len(records)}.0' in page
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(d["egress_id"] for d in lines) == sorted(r.egress_id for r in records)
    topic = settings.kafka.topic_prefix + "sink.archive"
    assert committed(settings, "archive") == end_offsets(settings, topic)


def test_missing_topics_exit_with_config_error(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without its topics the worker exits 2 with a message naming them."""
    settings = make_settings(kafka_broker, topic_prefix, sinks={"archive": {
        "type": "file", "path": str(tmp_path / "x.jsonl")}})
    assert run_sink(settings, "archive", "test") == EXIT_CONFIG
    assert "do not exist" in capsys.readouterr().err


def test_bad_sink_settings_exit_with_config_error(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A sink whose destination is unusable exits 2 naming the key, before touching Kafka."""
    settings = make_settings(kafka_broker, topic_prefix, sinks={"archive": {
        "type": "file", "path": str(tmp_path / "missing" / "x.jsonl")}})
    assert run_sink(settings, "archive", "test") == EXIT_CONFIG
    assert "sinks.archive.path" in capsys.readouterr().err
