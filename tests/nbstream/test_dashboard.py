"""`nbstream dashboard` on the real broker, rendered by headless Chromium.

Two sinks with induced, known states: ``fast`` has a worker whose destination takes every
record but rejects object 3's (dead letters), so it catches up to lag 0 (OK); ``stuck`` has a
backlog and no worker (STOP, time lag growing). The page must show each sink's status in its
colour, its lag figures and its two charts with the points sampled so far.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.conftest import free_port
from tests.e2e.harness import assert_alive, nbstream_processes, receiver_server
from tests.sinks.records import produce_records, synthetic_record

pytestmark = pytest.mark.kafka

STATUS_COLOURS = {"OK": "#2f9e5b", "STOP": "#e03a5f"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class Cards(HTMLParser):
    """Collects each dashboard card's data attributes, pill, figures and charts."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, dict[str, Any]] = {}
        self._card: dict[str, Any] | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and "data-group" in a:
            self._card = {**a, "figures": {}, "charts": {}}
            self.cards[a["data-sink"] or "processor"] = self._card
        elif self._card is None:
            return
        elif "data-status-pill" in a:
            self._card["pill_style"] = a.get("style", "")
            self._field = "pill"
        elif "data-figure" in a:
            self._field = "figure:" + a["data-figure"]
        elif tag == "svg" and "data-chart" in a:
            self._card["charts"][a["data-chart"]] = {"points": int(a["data-points"]), "line": ""}
            self._field = None
        elif tag == "polyline":
            chart = list(self._card["charts"].values())[-1]
            chart["line"] = a.get("points", "")

    def handle_data(self, data: str) -> None:
        if self._card is None or self._field is None or not data.strip():
            return
        if self._field == "pill":
            self._card["pill"] = data.strip()
        else:
            self._card["figures"][self._field.split(":", 1)[1]] = data.strip()
        self._field = None


def chromium(url: str, *args: str, budget_ms: int = 4000) -> str:
    """Load ``url`` in headless Chromium, let its scripts run, return stdout (e.g. the DOM)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is installed by `make test` (scripts/ensure-system-deps.sh)"
    out = subprocess.run([exe, *CHROMIUM_FLAGS, f"--virtual-time-budget={budget_ms}",
                          "--window-size=1280,1100", *args, url],
                         capture_output=True, timeout=120, check=True)
    return out.stdout.decode()


def state(port: int) -> dict[str, Any]:
    """Return the dashboard's /api/state, with groups by sink name (processor: 'processor')."""
    doc = httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=5).json()
    doc["by_sink"] = {g["sink"] or "processor": g for g in doc["groups"]}
    return doc


def test_dashboard_renders_each_sinks_status_lag_and_charts(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """The page shows fast=OK with lag 0 and its dead letter, stuck=STOP with its backlog."""
    with receiver_server() as (receiver, hook_port):
        receiver.status_for = lambda body: 400 if b'"name": "dev-3"' in body else 200
        port, metrics_port = free_port(), free_port()
        hook = {"type": "webhook", "payload_url": f"http://127.0.0.1:{hook_port}/h"}
        config = {
            "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                      "topic_prefix": topic_prefix, "partitions": 2},
            "sinks": {"fast": {**hook, "metrics_port": metrics_port}, "stuck": hook},
            "dashboard": {"port": port, "interval": 0.5, "window": 4, "history": 120},
        }
        settings = parse_settings(config, env={})
        ensure_topics(settings)
        topics = Topics(topic_prefix)
        producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
        for sink, objects in (("fast", 4), ("stuck", 25)):
            produce_records(producer, topics.sink(sink),
                            (synthetic_record(obj, 1, sink) for obj in range(1, objects + 1)))

        with nbstream_processes(config, tmp_path, ["sink", "fast"], ["dashboard"]) as procs:
            receiver.wait_for("/h", 3, timeout=60, procs=procs)
            deadline = time.monotonic() + 60
            while True:
                assert_alive(procs)
                try:
                    doc = state(port)
                    fast, stuck = doc["by_sink"]["fast"], doc["by_sink"]["stuck"]
                    if (fast["status"] == "OK" and fast["lag_messages"] == 0
                            and fast["dead_letters"] == 1 and stuck["status"] == "STOP"
                            and len(stuck["points"]) >= 4):
                        break
                except (httpx.HTTPError, KeyError):
                    pass
                assert time.monotonic() < deadline, "dashboard never settled: " + json.dumps(
                    {k: {x: g.get(x) for x in ("status", "lag_messages", "dead_letters")}
                     for k, g in doc["by_sink"].items()})
                time.sleep(0.5)
            assert fast["counters"]["delivered"] == 3 and fast["counters"]["failed"] == 1

            dom = chromium(f"http://127.0.0.1:{port}/", "--dump-dom")
            screenshot = tmp_path / "dashboard.png"
            chromium(f"http://127.0.0.1:{port}/", f"--screenshot={screenshot}")
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    cards = Cards()
    cards.feed(dom)
    print("dashboard cards:", json.dumps({k: {x: v[x] for x in ("data-status", "pill",
                                                                 "figures")}
                                          for k, v in cards.cards.items()}))
    assert set(cards.cards) == {"fast", "stuck", "processor"}
    fast_card, stuck_card = cards.cards["fast"], cards.cards["stuck"]

    assert fast_card["data-status"] == "OK" and fast_card["pill"] == "OK"
    assert STATUS_COLOURS["OK"] in fast_card["pill_style"]
    assert fast_card["data-lag-messages"] == "0"
    assert fast_card["figures"]["lag_messages"] == "0"
    assert fast_card["figures"]["dead_letters"] == "1"
    assert fast_card["figures"]["failed"] == "1"

    assert stuck_card["data-status"] == "STOP" and stuck_card["pill"] == "STOP"
    assert STATUS_COLOURS["STOP"] in stuck_card["pill_style"]
    assert stuck_card["data-lag-messages"] == "25"
    assert stuck_card["figures"]["lag_messages"] == "25"
    assert float(stuck_card["data-lag-seconds"]) > 0

    for card in (fast_card, stuck_card):
        for kind in ("lag_messages", "lag_seconds"):
            chart = card["charts"][kind]
            drawn = re.findall(r"[\d.]+,[\d.]+", chart["line"])
            assert chart["points"] >= 4 and len(drawn) == chart["points"], chart
    # The stuck sink's message chart is a flat line at its lag; the fast one's ends at 0.
    stuck_ys = {p.split(",")[1] for p in stuck_card["charts"]["lag_messages"]["line"].split()}
    assert len(stuck_ys) == 1

    assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes()[:4] == b"\x89PNG"
    stuck_group = re.escape(topics.sink_group("stuck"))
    assert re.search(rf'nbstream_consumer_group_status{{group="{stuck_group}",role="sink stuck"}}'
                     r" 3\.0", metrics), metrics
