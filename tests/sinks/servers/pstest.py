"""Google's in-memory Pub/Sub fake for the tests: built once with Go, run as a loopback process.

``build_pstest()`` compiles ``pstest/main.go`` (Google's ``cloud.google.com/go/pubsub/v2/pstest``
behind a tiny command of ours) with the Go toolchain and the module proxy into
``~/.cache/nbstream/pstest/<digest of the sources>/pstest``, rebuilding only when the sources
change. ``PsTestServer`` runs it on a free port (the kernel picks it: ``--port 0``) and stops it
by PID; ``FakeClients`` creates topics and subscriptions on it and reads messages back.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

__all__ = ["SOURCE", "FakeClients", "PsTestServer", "build_pstest"]

SOURCE = Path(__file__).resolve().with_name("pstest")
_SOURCES = ("main.go", "go.mod", "go.sum")


def _cache_root() -> Path:
    """Return nbstream's cache directory (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nbstream" / "pstest"


def _digest() -> str:
    """Return a digest of the fake's sources, naming the build they produce."""
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_pstest(timeout: float = 900.0) -> Path:
    """Return the fake's binary, building it with ``go build`` first if this version is new.

    Raises RuntimeError, saying why, when Go is missing or the build fails.
    """
    folder = _cache_root() / _digest()
    binary = folder / "pstest"
    if os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Pub/Sub fake needs Go (https://go.dev/dl/) on PATH to build")
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it right now
        if os.access(binary, os.X_OK):
            return binary
        with tempfile.TemporaryDirectory(dir=folder) as work:
            # Build from a copy: -mod=mod may update go.sum, never in the source tree.
            for name in _SOURCES:
                shutil.copy2(SOURCE / name, Path(work) / name)
            flags = f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip()
            env = {**os.environ, "GOFLAGS": flags}
            out = Path(work) / "pstest"
            try:
                done = subprocess.run(
                    [go, "build", "-trimpath", "-o", str(out), "."],
                    cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"building the Pub/Sub fake took over {timeout}s") from None
            if done.returncode != 0:
                raise RuntimeError(
                    f"building the Pub/Sub fake failed (go build, exit {done.returncode}):\n"
                    f"{done.stderr[-3000:]}"
                )
            os.replace(out, binary)
    return binary


class PsTestServer:
    """One running fake, on 127.0.0.1 and a port the kernel chose; use as a context manager.

    ``faults`` are ``--fail`` specifications (see main.go), e.g.
    ``"topic=projects/p/topics/t,code=UNAVAILABLE"``.
    """

    def __init__(self, binary: Path, faults: Sequence[str] = (), log_dir: Path | None = None):
        self.binary = binary
        self.faults = tuple(faults)
        self.log_dir = log_dir
        self.host = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def start(self, timeout: float = 30.0) -> PsTestServer:
        """Start the fake and wait for its ``ready`` line; raise RuntimeError if it fails."""
        fd, log = tempfile.mkstemp(prefix="pstest-", suffix=".log", dir=self.log_dir)
        self._log = Path(log)
        args = [str(self.binary), "--port", "0"]
        for fault in self.faults:
            args += ["--fail", fault]
        with os.fdopen(fd, "wb") as out:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self._log.read_text(errors="replace").partition("\n")
            if first[1] and first[0].startswith("ready "):
                self.host = first[0].split()[1]
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        output = self._log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"the Pub/Sub fake did not become ready: {output or 'no output'}")

    @property
    def pid(self) -> int:
        """Return the fake's process id."""
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    def stop(self) -> None:
        """Terminate the fake (SIGTERM to its PID, SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> PsTestServer:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class FakeClients:
    """Admin and subscriber clients on a fake: topics, ordered subscriptions, read-back."""

    def __init__(self, host: str) -> None:
        self.publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(host=host, channel=grpc.insecure_channel(host)))
        self.subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(host=host, channel=grpc.insecure_channel(host)))

    def create_topic(self, path: str) -> None:
        """Create topic ``path`` (projects/P/topics/T)."""
        self.publisher.create_topic(name=path)

    def delete_topic(self, path: str) -> None:
        """Delete topic ``path``."""
        self.publisher.delete_topic(topic=path)

    def create_subscription(self, path: str, topic: str) -> None:
        """Create subscription ``path`` on ``topic`` with message ordering enabled."""
        self.subscriber.create_subscription(
            request={"name": path, "topic": topic, "enable_message_ordering": True})

    def pull_all(self, subscription: str) -> list[Any]:
        """Pull and acknowledge until the subscription is empty; return the PubsubMessages.

        The subscription is ordered: each pull hands out only the oldest unacknowledged
        message of every ordering key, so the list holds each key's messages in order.
        """
        got: list[Any] = []
        while True:
            with warnings.catch_warnings():
                # Deprecated, but without it the fake holds an empty pull for 500 ms.
                warnings.simplefilter("ignore", DeprecationWarning)
                answer = self.subscriber.pull(subscription=subscription, max_messages=1000,
                                              return_immediately=True, timeout=10)
            if not answer.received_messages:
                return got
            got += [m.message for m in answer.received_messages]
            self.subscriber.acknowledge(subscription=subscription,
                                        ack_ids=[m.ack_id for m in answer.received_messages])

    def close(self) -> None:
        """Close both clients' channels."""
        self.publisher.transport.close()
        self.subscriber.transport.close()
