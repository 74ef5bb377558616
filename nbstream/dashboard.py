"""``nbstream dashboard``: a live page of every consumer group's lag, rate, errors and status.

A sampler thread observes every nbstream group (the processor and each enabled sink) with the
same ``LagReader`` as ``nbstream lag`` every ``dashboard.interval`` seconds, judges a
Burrow-style status over ``dashboard.window`` and keeps ``dashboard.history`` seconds of points
for the charts. Per sink it also counts the dead letters written (the DLQ topic's end offsets)
and, when the sink's worker serves ``metrics_port`` on this host, reads its delivered, failed
and retried counters. The page (``dashboard.html``, self-contained, no CDN) polls
``/api/state``; ``/metrics`` exports each group's status for Prometheus alert rules.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from nbstream.lag import Group, History, LagReader, groups_of
from nbstream.lag_status import group_status
from schemas.config import Settings
from schemas.topics import Topics

__all__ = ["Sampler", "serve_dashboard"]

log = logging.getLogger(__name__)

# Seconds of points the delivery rate is averaged over: commits land once a second, so a rate
# from two neighbouring points would saw-tooth.
_RATE_SPAN = 10.0
_COUNTERS = {"nbstream_sink_delivered": "delivered", "nbstream_sink_failed": "failed",
             "nbstream_sink_retried": "retried"}


@dataclass
class _Series:
    """What the page shows of one group: its latest figures and its recent points."""

    group: Group
    points: deque[tuple[float, int, float, int]] = field(default_factory=deque)
    latest: dict[str, Any] = field(default_factory=dict)


def scrape_sink_counters(port: int, sink: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Return a local sink worker's delivered/failed/retried totals, or None when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",  # noqa: S310 - http
                                    timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = dict.fromkeys(_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        name = _COUNTERS.get(family.name)
        if name is None:
            continue
        out[name] += sum(s.value for s in family.samples
                         if s.name.endswith("_total") and s.labels.get("sink") == sink)
    return out


class Sampler:
    """Observes every group on a schedule and keeps what the dashboard shows."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._conf = settings.dashboard
        self._topics = Topics(settings.kafka.topic_prefix)
        self._reader = LagReader(settings)
        self._history = History(self._conf.window)
        self._lock = threading.Lock()
        self._series = [_Series(g) for g in groups_of(settings)]
        self.registry = CollectorRegistry()
        self._status = Gauge("nbstream_consumer_group_status",
                             "Burrow-style status of the group over the dashboard window: "
                             "0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND.", ["group", "role"],
                             registry=self.registry)
        self.samples = 0

    def sample(self) -> None:
        """Observe every group once and update its series."""
        now = time.time()
        for s in self._series:
            rows = self._reader.observe(s.group)
            self._history.add(rows)
            statuses = {r.partition: self._history.status(s.group.name, r.partition)
                        for r in rows}
            status = group_status(list(statuses.values()))
            lag = sum(r.lag for r in rows)
            seconds = max((r.lag_seconds for r in rows), default=0.0)
            committed = sum(r.observation.committed or 0 for r in rows)
            latest: dict[str, Any] = {
                "group": s.group.name, "role": s.group.role, "sink": s.group.sink,
                "topic": s.group.topic, "status": status.name, "lag_messages": lag,
                "lag_seconds": round(seconds, 3),
                "members": max((r.observation.members for r in rows), default=0),
                "partitions": [{"partition": r.partition, "committed": r.observation.committed,
                                "end": r.observation.end, "lag_messages": r.lag,
                                "lag_seconds": round(r.lag_seconds, 3),
                                "status": statuses[r.partition].name} for r in rows],
            }
            sink = s.group.sink
            if sink is not None:
                latest["dead_letters"] = self._reader.written(self._topics.dlq(sink))
                port = self._settings.sinks[sink].metrics_port
                latest["counters"] = scrape_sink_counters(port, sink) if port else None
            with self._lock:
                s.points.append((now, lag, seconds, committed))
                while s.points and now - s.points[0][0] > self._conf.history:
                    s.points.popleft()
                latest["rate"] = self._rate(s.points)
                s.latest = latest
            self._status.labels(s.group.name, s.group.role).set(int(status))
        self.samples += 1

    @staticmethod
    def _rate(points: deque[tuple[float, int, float, int]]) -> float:
        """Return records finished per second over the last ``_RATE_SPAN`` seconds."""
        recent = [p for p in points if points[-1][0] - p[0] <= _RATE_SPAN]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return round(max(0, recent[-1][3] - recent[0][3]) / (recent[-1][0] - recent[0][0]), 1)

    def state(self) -> dict[str, Any]:
        """Return what ``/api/state`` serves: settings, and per group its figures and points."""
        with self._lock:
            groups = [{**s.latest, "points": [[round(t, 3), lag, round(sec, 3)]
                                              for t, lag, sec, _ in s.points]}
                      for s in self._series if s.latest]
        return {"at": time.time(), "interval": self._conf.interval, "window": self._conf.window,
                "history": self._conf.history, "samples": self.samples, "groups": groups}

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval`` seconds until ``stop`` is set; log and carry on on errors."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except KafkaException as err:
                log.warning("lag observation failed", extra={"error": str(err)})
            stop.wait(max(0.0, self._conf.interval - (time.monotonic() - started)))

    def close(self) -> None:
        """Release the reader's clients."""
        self._reader.close()


def _handler(sampler: Sampler, page: bytes) -> type[BaseHTTPRequestHandler]:
    """Return the request handler serving the page, the state and the metrics."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", page)
            elif path == "/api/state":
                self._send(200, "application/json", json.dumps(sampler.state()).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(sampler.registry))
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Requests are not worth a log line each."""

    return Handler


def serve_dashboard(settings: Settings, *, ready: threading.Event | None = None,
                    stop: threading.Event | None = None) -> None:
    """Serve the dashboard until ``stop`` is set (or KeyboardInterrupt)."""
    conf = settings.dashboard
    page = files("nbstream").joinpath("dashboard.html").read_bytes()
    sampler = Sampler(settings)
    stop = stop or threading.Event()
    server = ThreadingHTTPServer((conf.host, conf.port), _handler(sampler, page))
    server.daemon_threads = True
    threads = [threading.Thread(target=sampler.run, args=(stop,), name="dashboard-sampler",
                                daemon=True),
               threading.Thread(target=server.serve_forever, name="dashboard-http",
                                daemon=True)]
    for t in threads:
        t.start()
    log.info("dashboard serving", extra={"url": f"http://{conf.host}:{conf.port}/"})
    if ready is not None:
        ready.set()
    try:
        stop.wait()
    except KeyboardInterrupt:
        stop.set()
    finally:
        server.shutdown()
        server.server_close()
        threads[0].join(timeout=conf.interval + 30)
        sampler.close()
