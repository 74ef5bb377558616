"""A real moto server (SNS and SQS over HTTP) in its own process, and helpers to read it back.

The server runs as ``python -m moto.server`` on a free loopback port, so the sink under test,
an ``nbstream sink`` process and the test all talk to it over HTTP as they would to AWS.
Topics are verified through SQS queues subscribed to them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.conftest import free_port

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "MotoServer", "TcpProxy", "moto_server"]

REGION = "us-east-1"
# moto accepts any credentials; these are fake and only ever sent to loopback.
ACCESS_KEY = "AKIATESTNBSTREAM0001"
SECRET_KEY = "nbstream-test-secret-not-a-real-key"


@dataclass
class MotoServer:
    """A running moto server and boto3 clients pointed at it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def client(self, service: str) -> Any:
        """Return a boto3 client of ``service`` for this server."""
        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION,
        ).client(service, endpoint_url=self.endpoint_url)

    def create_topic(self, prefix: str = "nb", *, fifo: bool = False) -> str:
        """Create a uniquely named topic; return its ARN."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
        attributes = {"FifoTopic": "true"} if fifo else {}
        arn: str = self.client("sns").create_topic(Name=name, Attributes=attributes)["TopicArn"]
        return arn

    def subscribe_queue(self, topic_arn: str, *, raw: bool = True,
                        filter_policy: dict[str, Any] | None = None) -> str:
        """Create a queue (FIFO for a FIFO topic) subscribed to ``topic_arn``; return its URL."""
        sqs, sns = self.client("sqs"), self.client("sns")
        fifo = topic_arn.endswith(".fifo")
        name = f"q-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
        attributes = {"FifoQueue": "true"} if fifo else {}
        url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sub_attributes = {"RawMessageDelivery": "true" if raw else "false"}
        if filter_policy is not None:
            sub_attributes["FilterPolicy"] = json.dumps(filter_policy)
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                      Attributes=sub_attributes)
        return url

    def drain(self, queue_url: str, expected: int | None = None,
              timeout: float = 10.0) -> list[dict[str, Any]]:
        """Receive and delete messages until ``expected`` arrived (or the queue is empty).

        Returns the SQS messages with their attributes, in the order SQS handed them out.
        """
        sqs = self.client("sqs")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                AttributeNames=["All"], WaitTimeSeconds=0,
            ).get("Messages", [])
            if batch:
                got.extend(batch)
                sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(batch)])
                continue
            if expected is None or len(got) >= expected:
                break
            time.sleep(0.05)
        return got


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll the server until it answers; raise with its log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/moto-api/", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"moto server at {url} not ready after {timeout}s:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def moto_server(log_dir: Path, timeout: float = 30.0) -> Iterator[MotoServer]:
    """Run a moto server on a free loopback port; yield it; stop it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "moto-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, process, log_path, timeout)
            yield MotoServer(url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class TcpProxy:
    """A loopback TCP relay to a server, which a test can cut or stall to fake network failures.

    ``cut()`` closes the listener and every relayed connection (connection refused from then
    on); ``stall()`` drops the relayed connections and accepts new ones without ever answering.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stalled = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        """The URL clients use to reach the server through this proxy."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        """Accept connections until cut; relay each one unless stalled."""
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.append(conn)
                if self._stalled:
                    continue  # hold it open, never answer
                upstream = socket.create_connection(self._target)
                self._sockets.append(upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copy bytes from ``src`` to ``dst`` until either side closes."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _drop_connections(self) -> None:
        """Close every connection accepted or opened so far."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stall(self) -> None:
        """Drop the open connections; accept new ones but never answer them."""
        with self._lock:
            self._stalled = True
        self._drop_connections()

    def cut(self) -> None:
        """Stop listening and drop every connection: clients get connection refused."""
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        self._drop_connections()
