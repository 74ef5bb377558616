"""A real Mosquitto broker for tests, and a paho MQTT 5 subscriber that records what it gets.

The broker runs from a generated configuration on a free loopback port and is stopped by its
PID. Run as root, Mosquitto switches to the user named by ``user`` (default ``mosquitto``), who
could not read the test's password, ACL and key files nor write its log; the generated
configuration names the current user instead, which keeps the broker's identity unchanged.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import free_port

__all__ = ["Message", "Mosquitto", "Subscriber", "TlsFiles", "mosquitto_binary", "make_tls_files"]

_INSTALL_HINT = ("install it with scripts/ensure-system-deps.sh (make test runs it) or "
                 "apt-get install mosquitto")


def mosquitto_binary(name: str = "mosquitto") -> str:
    """Return the path of a Mosquitto program; raise RuntimeError (never skip) if missing."""
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"{name} is not installed: the MQTT sink tests need it; {_INSTALL_HINT}")


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed CA-less setup: the broker's and a client's certificate, each its own CA."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, server_names: str = "IP:127.0.0.1") -> TlsFiles:
    """Create a server certificate (subjectAltName ``server_names``) and a client one."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    files = TlsFiles(directory / "server.pem", directory / "server.key",
                     directory / "client.pem", directory / "client.key")
    for cert, key, cn, san in ((files.server_cert, files.server_key, "broker", server_names),
                               (files.client_cert, files.client_key, "nbstream", None)):
        args = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={cn}"]
        if san:
            args += ["-addext", f"subjectAltName={san}"]
        subprocess.run(args, check=True, capture_output=True)
    return files


class Mosquitto:
    """One Mosquitto process with a generated configuration on a loopback port."""

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 acl: str | None = None, tls: TlsFiles | None = None,
                 options: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.acl = acl
        self.tls = tls
        self.options = tuple(options)
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        """Return the broker's configuration file text."""
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            # Mosquitto drops QoS 1/2 messages beyond 1,000 queued for a slow subscriber; the
            # tests' subscribers must see every message, however busy the machine. (Not 0,
            # "unlimited": with it, 2.0.11 drops the connection after an ACL denial.)
            "max_queued_messages 100000",
            # As root Mosquitto would become "mosquitto", who cannot read the files made here.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.unlink(missing_ok=True)
            tool = mosquitto_binary("mosquitto_passwd")
            for i, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run([tool, "-b", *create, str(passwd), user, password],
                               check=True, capture_output=True)
            lines.append(f"password_file {passwd}")
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl, encoding="utf-8")
            lines.append(f"acl_file {acl}")
        if self.tls is not None:
            lines += [f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}",
                      f"cafile {self.tls.client_cert}", "require_certificate true"]
        lines += self.options
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until its port accepts connections."""
        binary = mosquitto_binary()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self._config(), encoding="utf-8")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill the broker at once, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log(self, tail: int | None = 3000) -> str:
        """Return the last ``tail`` characters of the broker's log (None: all of it)."""
        if not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    """One message the subscriber received."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...]
    content_type: str | None
    payload_format: int | None

    def json(self) -> Any:
        """Return the payload decoded as JSON."""
        return json.loads(self.payload)

    @property
    def egress_id(self) -> str:
        """Return the envelope's egress id."""
        return str(self.json()["egress_id"])


class Subscriber:
    """A paho MQTT 5 client subscribed to topic filters; records messages in arrival order."""

    def __init__(self, port: int, filters: Sequence[str] = ("netbox/#",), qos: int = 1,
                 username: str | None = None, password: str | None = None) -> None:
        self.port = port
        self.filters = tuple(filters)
        self.qos = qos
        self.client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self._sync_prefix = f"nbstream-test/sync/{self.client_id}"
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._syncs: set[str] = set()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                    _p: Properties | None) -> None:
        if not reason.is_failure:
            client.subscribe([(f, self.qos) for f in (*self.filters, f"{self._sync_prefix}/#")])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _codes: list[ReasonCode],
                      _p: Properties | None) -> None:
        self._ready.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.startswith(self._sync_prefix):
                self._syncs.add(msg.topic)
                return
            props = msg.properties
            self._messages.append(Message(
                topic=msg.topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
                user_properties=tuple(getattr(props, "UserProperty", ())),
                content_type=getattr(props, "ContentType", None),
                payload_format=getattr(props, "PayloadFormatIndicator", None)))

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait until the subscriptions are in place."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"subscriber could not subscribe on port {self.port}")
        return self

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def messages(self) -> list[Message]:
        """Return the messages received so far."""
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Wait until ``count`` messages arrived; return all received (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages()) < count:
            time.sleep(0.02)
        return self.messages()

    def sync(self, timeout: float = 10.0) -> list[Message]:
        """Return every message the broker had queued for us before now.

        A marker published now is queued behind everything the broker accepted before it
        (MQTT keeps the order of one subscriber's queue), so once it arrives, they have too.
        """
        topic = f"{self._sync_prefix}/{uuid.uuid4().hex}"
        self.client.publish(topic, b"", qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if topic in self._syncs:
                    return list(self._messages)
            time.sleep(0.01)
        raise TimeoutError(f"sync marker {topic} not received within {timeout}s")

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
