"""Every metric the README documents is on the `/metrics` of the process it names, in a running
pipeline, with the lag series labelled by group, topic and partition."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.conftest import FIXTURES, free_port
from tests.e2e.harness import e2e_base, nbstream_processes, receiver_server, wait_ready

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(nbstream_[a-z_]+)` \| ([a-z, ]+) \|", re.M)


def documented() -> dict[str, set[str]]:
    """Return process -> metric names, from the README's metrics table."""
    out: dict[str, set[str]] = {}
    for name, processes in ROW.findall(README.read_text(encoding="utf-8")):
        for process in processes.split(","):
            out.setdefault(process.strip(), set()).add(name)
    return out


def exposed(url: str) -> dict[str, list[dict[str, str]]]:
    """Return sample name -> label sets found at ``url``."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s.labels)
    return out


def present(name: str, samples: dict[str, list[dict[str, str]]]) -> bool:
    """Whether metric ``name`` (a counter's ``_total``, a histogram's ``_count``) is exposed."""
    return any(n in samples for n in (name, f"{name}_count"))


def test_every_documented_metric_is_exposed(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """Ingest, processor, sink worker and dashboard each expose the README's metrics for them."""
    docs = documented()
    assert set(docs) == {"ingest", "processor", "sink", "dashboard"}, docs
    assert sum(len(v) for v in docs.values()) >= 22
    ingest_port, processor_port, sink_port, dashboard_port = (free_port() for _ in range(4))
    with receiver_server() as (receiver, port):
        config = {
            **e2e_base(kafka_broker, topic_prefix, tmp_path, ingest_port),
            "sinks": {"hook": {"type": "webhook", "payload_url": f"http://127.0.0.1:{port}/h",
                               "metrics_port": sink_port}},
            "rules": [{"name": "devices", "object_types": ["dcim.device"], "sinks": ["hook"]}],
            "dashboard": {"port": dashboard_port, "interval": 0.5},
        }
        config["processor"]["web_port"] = processor_port
        ensure_topics(parse_settings(config, env={}))
        with nbstream_processes(config, tmp_path, ["ingest"], ["process"], ["sink", "hook"],
                                ["dashboard"], ingest_port=ingest_port) as procs:
            with httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}") as client:
                for line in FIXTURES.read_text().splitlines():
                    req = json.loads(line)
                    headers = {k: v for k, v in req["headers"]
                               if k in ("Content-Type", "X-Hook-Signature")}
                    assert client.post("/webhook", content=req["body"].encode(),
                                       headers=headers).status_code == 202
            devices = sum('"object_type": "dcim.device"' in json.loads(line)["body"]
                          for line in FIXTURES.read_text().splitlines())
            assert len(receiver.wait_for("/h", devices, timeout=90, procs=procs)) >= devices
            for url in (f"http://127.0.0.1:{processor_port}/metrics",
                        f"http://127.0.0.1:{dashboard_port}/healthz"):
                wait_ready(url, procs)
            # A worker knows its offset lag from librdkafka's statistics, every 5 s.
            deadline = time.monotonic() + 30
            while ("nbstream_consumer_lag_messages" not in exposed(
                    f"http://127.0.0.1:{sink_port}/metrics") and time.monotonic() < deadline):
                time.sleep(0.5)
            scraped = {
                "ingest": exposed(f"http://127.0.0.1:{ingest_port}/metrics"),
                "processor": exposed(f"http://127.0.0.1:{processor_port}/metrics"),
                "sink": exposed(f"http://127.0.0.1:{sink_port}/metrics"),
                "dashboard": exposed(f"http://127.0.0.1:{dashboard_port}/metrics"),
            }

    missing = {p: sorted(n for n in names if not present(n, scraped[p]))
               for p, names in docs.items()}
    assert not any(missing.values()), missing
    topics = Topics(topic_prefix)
    for process, group, topic in (("processor", topics.processor_group(), topics.raw),
                                  ("sink", topics.sink_group("hook"), topics.sink("hook"))):
        labels = scraped[process]["nbstream_consumer_lag_seconds"]
        assert {(x["group"], x["topic"]) for x in labels} == {(group, topic)}, labels
        assert sorted(int(x["partition"]) for x in labels) == [0, 1, 2], labels
