"""Runs nbstream stages as real processes and a real HTTP receiver, for end-to-end tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    received: float

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class Receiver:
    """A threaded HTTP server on a free loopback port that records every request."""

    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: int = 200
    status_for: Callable[[bytes], int] | None = None
    # Called with the request's headers after it was recorded, before it is answered: a test
    # can hold answers back (a slow destination).
    before_answer: Callable[[Mapping[str, str]], None] | None = None
    rejected: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """Return a request handler class bound to this receiver."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.status_for(body) if receiver.status_for else receiver.status
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.deliveries.append(Delivery(
                            self.path, dict(self.headers.items()), body, time.time()))
                else:
                    receiver.rejected += 1
                if receiver.before_answer is not None:
                    receiver.before_answer(self.headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def by_path(self, path: str) -> list[Delivery]:
        """Return the deliveries to ``path`` in arrival order."""
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60.0,
                 procs: list[subprocess.Popen[bytes]] | None = None) -> list[Delivery]:
        """Wait for ``count`` deliveries to ``path``; return them (fewer on timeout).

        Fails at once, with the process's log, if one of ``procs`` has died meanwhile.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.by_path(path)) < count:
            assert_alive(procs or [])
            time.sleep(0.1)
        return self.by_path(path)


class _ReceiverServer(ThreadingHTTPServer):
    """A threaded HTTP server that stays quiet about connections a killed client reset.

    Its listen backlog is 128, not socketserver's 5: a sink opening its pool (64 connections)
    at once overflowed 5, and the kernel then completed those connections seconds later, so a
    request the sink had abandoned at its 10 s timeout (and retried) still arrived, after newer
    records of its object: 122 overflows in one run of the processor rebalance test, and a CI
    run that saw stale states delivered last.
    """

    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection resets; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def receiver_server() -> Iterator[tuple[Receiver, int]]:
    """Serve a Receiver on a free port; yield it and the port; stop it afterwards."""
    rec = Receiver()
    server = _ReceiverServer(("127.0.0.1", 0), rec.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def nbstream_processes(config: dict[str, Any], tmp: Path, *commands: list[str],
                       ingest_port: int | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Write ``config`` and run ``nbstream <command>`` processes; SIGTERM them afterwards."""
    path = tmp / "nbstream.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    procs = []
    logs = []
    try:
        for i, cmd in enumerate(commands):
            log = (tmp / f"proc{i}-{cmd[0]}.log").open("wb")
            logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, "-m", "nbstream", "--config", str(path), "--log-level",
                 "warning", *cmd], stdout=log, stderr=subprocess.STDOUT)
            proc.log_path = log.name  # type: ignore[attr-defined]
            procs.append(proc)
        if ingest_port is not None:
            wait_ready(f"http://127.0.0.1:{ingest_port}/readyz", procs)
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def assert_alive(procs: list[subprocess.Popen[bytes]]) -> None:
    """Raise with the tail of its log if any of ``procs`` has exited."""
    for p in procs:
        if p.poll() is not None:
            log = Path(str(getattr(p, "log_path", "")))
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise AssertionError(f"{p.args!r} exited with {p.returncode}:\n{tail}")


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert_alive(procs)
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def e2e_base(broker: Any, prefix: str, tmp: Path, ingest_port: int) -> dict[str, Any]:
    """Return the config sections every end-to-end test shares; tests add sinks and rules.

    ``broker`` is the session's LocalBroker; topics live under the test's own ``prefix``.
    """
    from tests.conftest import FIXTURE_SECRET

    return {
        "netbox": {"id": "nb-e2e", "version": "4.6.8", "webhook_secrets": [FIXTURE_SECRET]},
        "environment": "e2e",
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic_prefix": prefix,
                  "partitions": 3},
        "ingest": {"port": ingest_port},
        "processor": {"data_dir": str(tmp / "processor"), "web_port": 0},
    }


def signature_ok(body: bytes, secret: str, header: str | None) -> bool:
    """Return whether ``header`` is NetBox's HMAC-SHA512 signature of ``body``."""
    want = hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()
    return header is not None and hmac.compare_digest(want, header)
