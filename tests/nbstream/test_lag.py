"""`nbstream lag` on the real broker: induced lag, idle producers, stall, stop and recovery."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from nbstream.lag import run_lag
from schemas.config import Settings, parse_settings
from schemas.topics import Topics
from tests.e2e.harness import nbstream_processes, receiver_server
from tests.sinks.records import produce_records, synthetic_record

pytestmark = pytest.mark.kafka


def lag_report(settings: Settings, window: float = 3, interval: float = 1) -> tuple[int, Any]:
    """Run `nbstream lag --json` once; return its exit code and the sink group's report."""
    out = io.StringIO()
    code = run_lag(settings, as_json=True, watch=False, window=window, interval=interval,
                   out=out)
    doc = json.loads(out.getvalue().splitlines()[-1])
    print("nbstream lag:", json.dumps(doc["groups"], indent=None)[:600])
    return code, next(g for g in doc["groups"] if g["role"] == "sink hook")


def test_lag_statuses_follow_the_worker_and_destination(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """No worker + backlog: STOP with growing time lag; destination 503: STALL; fixed: OK, 0."""
    with receiver_server() as (receiver, port):
        config = {
            "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                      "topic_prefix": topic_prefix, "partitions": 2},
            "sinks": {"hook": {"type": "webhook", "payload_url": f"http://127.0.0.1:{port}/h",
                               "retry": {"initial_delay": 0.2, "max_delay": 0.5,
                                         "max_attempts": 1000, "max_elapsed": 600}}},
        }
        settings = parse_settings(config, env={})
        ensure_topics(settings)
        produce_records(Producer({"bootstrap.servers": kafka_broker.bootstrap_servers}),
                        Topics(topic_prefix).sink("hook"),
                        (synthetic_record(i, 1, "hook") for i in range(20)))

        code, first = lag_report(settings)
        assert code == 1 and first["status"] == "STOP" and first["lag_messages"] == 20
        time.sleep(2)  # producers stay idle: the time lag must keep growing, not read 0
        _, second = lag_report(settings)
        assert second["lag_seconds"] >= first["lag_seconds"] + 2

        receiver.status = 503
        with nbstream_processes(config, tmp_path, ["sink", "hook"]):
            deadline = time.monotonic() + 30
            while receiver.rejected == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            code, stalled = lag_report(settings, window=4)
            assert code == 1 and stalled["status"] == "STALL"
            assert stalled["lag_messages"] == 20
            assert all(part["members"] == 1 for part in stalled["partitions"])

            receiver.status = 200
            receiver.wait_for("/h", 20, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                code, healed = lag_report(settings, window=2)
                if code == 0:
                    break
            assert code == 0 and healed["status"] == "OK"
            assert healed["lag_messages"] == 0 and healed["lag_seconds"] == 0


def test_lag_warns_while_a_slow_destination_falls_behind(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """Records arrive at ~150/s, the destination takes ~40/s: offsets move, lag only grows: WARN.
    Then the load stops, the destination speeds up, the worker catches up: lag 0, OK. One
    partition: with several, librdkafka may serve one partition's backlog while another's
    offset rightly stands still (STALL)."""
    slow = threading.Lock()

    def one_at_a_time(_body: bytes) -> int:
        with slow:
            time.sleep(0.025)
        return 200

    with receiver_server() as (receiver, port):
        receiver.status_for = one_at_a_time
        config = {
            "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                      "topic_prefix": topic_prefix, "partitions": 1},
            "sinks": {"hook": {"type": "webhook", "payload_url": f"http://127.0.0.1:{port}/h",
                               "batch_size": 20}},
        }
        settings = parse_settings(config, env={})
        ensure_topics(settings)
        topic = Topics(topic_prefix).sink("hook")
        stop = threading.Event()

        def load() -> None:
            producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
            seq = 0
            while not stop.is_set():
                seq += 1
                produce_records(producer, topic,
                                (synthetic_record(obj, seq, "hook") for obj in range(15)))
                time.sleep(0.1)

        produce_records(Producer({"bootstrap.servers": kafka_broker.bootstrap_servers}), topic,
                        [synthetic_record(0, 0, "hook")])
        with nbstream_processes(config, tmp_path, ["sink", "hook"]) as procs:
            assert receiver.wait_for("/h", 1, timeout=60, procs=procs)  # the worker consumes
            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            try:
                time.sleep(3)  # the backlog builds
                code, behind = lag_report(settings, window=5)
            finally:
                stop.set()
                loader.join()
            assert code == 1 and behind["status"] == "WARN", behind
            assert behind["lag_messages"] > 0 and behind["lag_seconds"] > 0

            receiver.status_for = None
            deadline = time.monotonic() + 60
            while True:
                code, caught_up = lag_report(settings, window=2)
                if caught_up["lag_messages"] == 0 or time.monotonic() > deadline:
                    break
            assert code == 0 and caught_up["status"] == "OK" and caught_up["lag_messages"] == 0
