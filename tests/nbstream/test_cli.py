"""The console script: help, config errors, rules check/test, tail and replay."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from nbstream.admin import ensure_topics
from nbstream.cli import ingest_app, main
from nbstream.kafka_local import LocalBroker
from producers.ingest import IngestApp
from producers.signature import sign
from schemas.config import parse_settings
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.conftest import FIXTURE_SECRET, FIXTURES
from tests.e2e.harness import receiver_server, signature_ok
from tests.processors.helpers import event_from_payload, fixture_payloads

CONFIG: dict[str, Any] = {
    "netbox": {"id": "nb", "webhook_secrets": [FIXTURE_SECRET]},
    "sinks": {"hook": {"type": "webhook", "payload_url": "http://127.0.0.1:9/hook"},
              "files": {"type": "file", "path": "out.jsonl"}},
    "rules": [
        {"name": "active-devices", "object_types": ["dcim.device"], "sinks": ["hook"],
         "conditions": {"attr": "status.value", "value": "active"}},
        {"name": "sites", "object_types": ["dcim.site"], "sinks": ["files"]},
        {"name": "tenant-acme", "sinks": ["files"],
         "conditions": {"attr": "tenant.slug", "value": "acme"}},
    ],
}


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    """Write a YAML config and return its path."""
    path = tmp_path / "nbstream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_help_explains_every_command() -> None:
    """`nbstream --help` (as a real process) lists the commands from DESIGN §8."""
    out = subprocess.run([sys.executable, "-m", "nbstream", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("up", "ingest", "process", "sink", "kafka", "rules", "tail", "replay"):
        assert f"    {command}" in out
    assert "${VAR:-default}" in out


@pytest.mark.parametrize(("change", "needle"), [
    ({"sinks": {"hook": {"type": "webhook"}}}, "sinks.hook"),
    ({"sinks": {"hook": {"type": "webhook", "payload_url": "http://x", "http_method": "FETCH"}}},
     "sinks.hook.http_method"),
    ({"sinks": {"hook": {"type": "carrier-pigeon"}}}, "unknown sink type"),
    ({"rules": [{"name": "broken", "sinks": ["hook"],
                 "conditions": {"attr": "x", "value": 1, "op": "neq"}}]},
     "rules.broken.conditions"),
    ({"rules": [{"name": "upper", "sinks": ["hook"],
                 "conditions": {"AND": [{"attr": "x", "value": 1}]}}]},
     "rules.upper.conditions"),
])
def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], needle: str
) -> None:
    """Sink fields and rule conditions are validated at load; the message names the key."""
    config = {**CONFIG, **change}
    if "rules" not in change:
        config["rules"] = [r for r in CONFIG["rules"] if "hook" in r["sinks"]]
    if "sinks" in change:
        config["rules"] = [{"name": "r", "sinks": ["hook"]}]
    assert main(["--config", str(write(tmp_path, config)), "rules", "check"]) == 2
    assert needle in capsys.readouterr().err


def test_rules_check_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rules check` on a valid file lists sinks and rules."""
    assert main(["--config", str(write(tmp_path, CONFIG)), "rules", "check"]) == 0
    out = capsys.readouterr().out
    assert "2 enabled sink(s), 3 enabled rule(s)" in out and "active-devices" in out


def test_rules_test_explains_each_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A captured device creation reaches hook; the others say why they did not match."""
    line = FIXTURES.read_text().splitlines()[2]  # create device edge-01 (active)
    event = tmp_path / "event.json"
    event.write_text(line)
    assert main(["--config", str(write(tmp_path, CONFIG)), "rules", "test", str(event)]) == 0
    out = capsys.readouterr().out
    assert "object_created on dcim.device:1" in out
    assert "MATCH active-devices" in out and "conditions true" in out
    assert "object type dcim.device not in ['dcim.site']" in out
    assert "-> sink hook (rules: active-devices)" in out

    tenant_less = json.loads(json.loads(line)["body"])
    tenant_less["data"]["tenant"] = None
    tenant_less["data"]["status"]["value"] = "planned"
    event.write_text(json.dumps(tenant_less))
    assert main(["--config", str(write(tmp_path, CONFIG)), "rules", "test", str(event)]) == 1
    out = capsys.readouterr().out
    assert "condition raised: Invalid key path: tenant.slug" in out
    assert "conditions false" in out and "reaches no sink" in out


def test_rules_test_rejects_non_netbox_payload(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON document that is not a NetBox event is reported, exit 2."""
    event = tmp_path / "event.json"
    event.write_text('{"hello": "world"}')
    assert main(["--config", str(write(tmp_path, CONFIG)), "rules", "test", str(event)]) == 2
    assert "not a NetBox event" in capsys.readouterr().out


@pytest.mark.kafka
def test_tail_decodes_raw_and_invalid_records(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tail` prints Avro records as JSON and raw-bytes topics as base64, with headers."""
    config = {"kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                        "topic_prefix": topic_prefix, "partitions": 1}}
    settings = parse_settings(config, env={})
    ensure_topics(settings)
    topics = Topics(topic_prefix)
    serde = make_serde(None)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    events = [event_from_payload(x) for x in fixture_payloads()[:3]]
    for ev in events:
        p.produce(topics.raw, key=ev.object_key.encode(),
                  value=serde.encode("NetBoxEvent", ev.to_dict(), topics.raw))
    p.produce(topics.invalid, key=b"k", value=b"\xffjunk", headers=[("nbstream-error", b"bad")])
    assert p.flush(30) == 0
    path = str(write(tmp_path, config))
    assert main(["--config", path, "tail", topics.raw, "--from-beginning", "--max", "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["key"] for x in lines] == [ev.object_key for ev in events]
    assert [x["value"]["source_id"] for x in lines] == [ev.source_id for ev in events]
    assert lines[0]["value"]["source_timestamp"].startswith("2026-11-22T05:00:31")
    assert main(["--config", path, "tail", topics.invalid, "--from-beginning", "--max", "1"]) == 0
    inv = json.loads(capsys.readouterr().out)
    assert inv["value_base64"] == "/2p1bms=" and inv["headers"] == {"nbstream-error": "bad"}


def test_replay_signs_with_the_configured_secret(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`replay` posts every captured body, in order, signed as NetBox signs."""
    with receiver_server() as (receiver, port):
        receiver.status = 202
        config = {**CONFIG, "netbox": {"webhook_secrets": ["other-secret"]}}
        path = str(write(tmp_path, config))
        assert main(["--config", path, "replay", str(FIXTURES),
                     "--url", f"http://127.0.0.1:{port}/webhook"]) == 0
        got = receiver.by_path("/webhook")
    bodies = [json.loads(x)["body"].encode() for x in FIXTURES.read_text().splitlines()]
    assert [d.body for d in got] == bodies
    assert all(signature_ok(d.body, "other-secret", d.headers["X-Hook-Signature"]) for d in got)
    assert got[0].headers["X-Hook-Signature"] == sign(bodies[0], "other-secret")
    assert "posted 31 payloads" in capsys.readouterr().out


@pytest.fixture
def switch_interval() -> Iterator[None]:
    """Restore the interpreter's switch interval after a test that lets nbstream set it."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(saved)


def test_commands_run_with_the_short_gil_switch_interval(
    tmp_path: Path, switch_interval: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command (here `rules check`) sets the 1 ms switch interval (nbstream.gil)."""
    assert main(["--config", str(write(tmp_path, CONFIG)), "rules", "check"]) == 0
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_ingest_workers_run_with_the_short_gil_switch_interval(
    tmp_path: Path, switch_interval: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's worker processes start in ``ingest_app``, not in ``main``: it sets the interval
    too and returns the ingest app for the configured file."""
    monkeypatch.setenv("NBSTREAM_CONFIG", str(write(tmp_path, CONFIG)))
    assert isinstance(ingest_app(), IngestApp)
    assert sys.getswitchinterval() == pytest.approx(0.001)
