"""Dead letters end to end: a sink worker dead-letters what the receiver rejects; `dlq list`
shows them with their error and origin; `dlq replay` re-delivers them with the same egress_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from nbstream.admin import ensure_topics
from nbstream.cli import main
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.serde import make_serde
from schemas.topics import Topics
from tests.e2e.harness import nbstream_processes, receiver_server
from tests.sinks.records import synthetic_record

pytestmark = pytest.mark.kafka

REJECTED = {"dcim.device:3", "dcim.device:7"}


def test_rejected_records_are_dead_lettered_listed_and_replayed(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """400 for two objects -> 8 delivered, 2 in the DLQ; fixed receiver -> replay delivers them."""
    with receiver_server() as (receiver, port):
        receiver.status_for = lambda body: (
            400 if json.loads(body)["message"]["data"]["id"] in (3, 7) else 200)
        config = {
            "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                      "topic_prefix": topic_prefix, "partitions": 3},
            "sinks": {"hook": {"type": "webhook",
                               "payload_url": f"http://127.0.0.1:{port}/hook"}},
        }
        settings = parse_settings(config, env={})
        ensure_topics(settings)
        topics = Topics(topic_prefix)
        serde = make_serde(None)
        records = [synthetic_record(i, 1, "hook") for i in range(10)]
        p = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
        for r in records:
            p.produce(topics.sink("hook"), key=r.object_key.encode(),
                      value=serde.encode("SinkRecord", r.to_dict(), topics.sink("hook")))
        assert p.flush(30) == 0
        with nbstream_processes(config, tmp_path, ["sink", "hook"]) as procs:
            delivered = receiver.wait_for("/hook", 8, procs=procs)
        assert sorted(d.json()["message"]["data"]["id"] for d in delivered) == [
            0, 1, 2, 4, 5, 6, 8, 9]

        path = tmp_path / "nbstream.yaml"
        path.write_text(yaml.safe_dump(config))
        capsys.readouterr()
        assert main(["--config", str(path), "dlq", "list", "hook", "--json"]) == 0
        letters = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert {x["record"]["object_key"] for x in letters} == REJECTED
        for x in letters:
            assert x["error_class"] == "permanent" and "400" in x["error_message"]
            assert x["attempts"] == 1
            assert x["origin"]["nbstream-original-topic"] == topics.sink("hook")
            assert {"nbstream-original-partition", "nbstream-original-offset"} <= set(x["origin"])
        wanted = {r.object_key: r.egress_id for r in records if r.object_key in REJECTED}
        assert {x["record"]["object_key"]: x["record"]["egress_id"] for x in letters} == wanted

        receiver.status_for = None  # the destination is fixed
        assert main(["--config", str(path), "dlq", "replay", "hook", "--dry-run"]) == 0
        assert "dry run: 2 record(s) selected, nothing sent" in capsys.readouterr().out
        assert len(receiver.by_path("/hook")) == 8

        one = wanted["dcim.device:3"]
        assert main(["--config", str(path), "dlq", "replay", "hook", "--egress-id", one]) == 0
        assert "1 delivered, 0 failed" in capsys.readouterr().out
        assert main(["--config", str(path), "dlq", "replay", "hook", "--since", "1h"]) == 0
        assert "2 delivered, 0 failed" in capsys.readouterr().out
        replayed = [d.json() for d in receiver.by_path("/hook")[8:]]
    # first the one named by --egress-id, then both (DLQ partition order), same egress ids
    assert replayed[0]["egress_id"] == one
    assert sorted(e["egress_id"] for e in replayed[1:]) == sorted(wanted.values())
    assert all(e["message"]["data"]["id"] in (3, 7) for e in replayed)
