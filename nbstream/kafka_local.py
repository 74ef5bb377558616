"""The local single-node Apache Kafka broker (KRaft): fetched from Maven Central, run by the JDK.

``install`` resolves the broker's jars and their runtime dependencies with Maven into a cache
directory; ``start`` formats storage once, launches ``kafka.Kafka`` on loopback ports and waits
until the broker answers metadata requests; ``stop`` ends it by PID with SIGTERM (then SIGKILL).
``KAFKA_HOME`` (an unpacked Kafka distribution) replaces the Maven download when set.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["BrokerError", "LocalBroker", "cache_dir", "install"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The local broker could not be installed, started or stopped."""


def cache_dir() -> Path:
    """Return the directory that caches downloaded Kafka releases."""
    base = os.environ.get("NBSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nbstream"
    )
    return Path(base)


def _libs_dir(version: str) -> Path:
    """Return the jar directory of ``version``: ``$KAFKA_HOME/libs`` or the cache."""
    home = os.environ.get("KAFKA_HOME")
    if home:
        return Path(home) / "libs"
    return cache_dir() / f"kafka-{version}" / "libs"


def install(version: str, *, quiet: bool = False) -> Path:
    """Resolve Kafka ``version`` and its runtime dependencies into the cache; return the jar dir.

    Idempotent: a completed install is marked by a stamp file and not repeated.
    """
    libs = _libs_dir(version)
    if os.environ.get("KAFKA_HOME"):
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"KAFKA_HOME={os.environ['KAFKA_HOME']} has no libs/kafka_2.13-*.jar")
        return libs
    stamp = libs.parent / ".installed"
    if stamp.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed to fetch Kafka from Maven Central; install it")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    pom = resources.files("nbstream").joinpath("kafka-pom.xml").read_text(encoding="utf-8")
    (work / "pom.xml").write_text(pom.replace("@KAFKA_VERSION@", version), encoding="utf-8")
    tmp = work / "libs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(2, "-q")
    log.info("fetching Apache Kafka %s from Maven Central into %s", version, work)
    done = subprocess.run(cmd, check=False, capture_output=quiet, text=True)  # noqa: S603
    if done.returncode != 0:
        detail = (done.stdout or "")[-2000:] if quiet else ""
        raise BrokerError(f"mvn could not resolve Apache Kafka {version}\n{detail}")
    # kafka's POM pins SLF4J 1.7 while its Log4j 2 binding needs SLF4J 2: keep only the latter.
    for old in tmp.glob("slf4j-api-1.*.jar"):
        old.unlink()
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    stamp.write_text(version, encoding="utf-8")
    return libs


def _java() -> str:
    """Return the java executable (``$JAVA_HOME/bin/java`` or the PATH's)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise BrokerError("a JDK (17 or newer) is needed to run Kafka; install one")
    return java


def _port_open(host: str, port: int) -> bool:
    """Return whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class LocalBroker:
    """A single-node KRaft broker with its data, config, log and PID file under ``data_dir``."""

    data_dir: Path
    version: str = "4.3.1"
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    heap: str = "1g"

    @property
    def bootstrap_servers(self) -> str:
        """The client bootstrap address."""
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        """Where the running broker's PID is kept."""
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        """The broker's console log."""
        return self.data_dir / "broker.log"

    def _properties(self) -> str:
        """Return server.properties for a single broker+controller node."""
        h = self.host
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{h}:{self.controller_port}",
            f"listeners=PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://{h}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=1",
            # nbstream creates its topics itself (DESIGN §4): never rely on auto-creation.
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # A single local node: start consumer groups at once instead of waiting 3 s.
            "group.initial.rebalance.delay.ms=0",
            "",
        ])

    def running_pid(self) -> int | None:
        """Return the PID of this broker if it is alive, else None."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def _format(self, libs: Path) -> None:
        """Format KRaft storage once; later starts reuse it."""
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cp = f"{libs}/*"
        cluster = str(uuid.uuid4())
        # "--cluster-id=ID" form: a base64url id may start with "-" and read as an option.
        cmd = [_java(), "-cp", cp, "kafka.tools.StorageTool", "format",
               f"--cluster-id={_kafka_cluster_id(cluster)}",
               "--config", str(self.data_dir / "server.properties")]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)  # noqa: S603
        if done.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed: {done.stdout}{done.stderr}")

    def start(self, timeout: float = 60.0) -> int:
        """Start the broker in the background (if not running) and wait until it serves.

        Returns the broker's PID. Raises BrokerError if it exits or does not serve in time.
        """
        pid = self.running_pid()
        if pid is not None:
            return pid
        if _port_open(self.host, self.port):
            raise BrokerError(f"{self.host}:{self.port} is already in use by another process")
        libs = install(self.version, quiet=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "server.properties").write_text(self._properties(), encoding="utf-8")
        log4j = resources.files("nbstream").joinpath("kafka-log4j2.yaml").read_text("utf-8")
        (self.data_dir / "log4j2.yaml").write_text(log4j, encoding="utf-8")
        self._format(libs)
        cmd = [_java(), f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
               "-cp", f"{libs}/*", "kafka.Kafka", str(self.data_dir / "server.properties")]
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid), encoding="utf-8")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with {proc.returncode}:\n{tail}")
            if _port_open(self.host, self.port) and self._serves():
                return proc.pid
            time.sleep(0.25)
        self.stop()
        raise BrokerError(f"Kafka did not serve on {self.bootstrap_servers} within {timeout:.0f}s")

    def _serves(self) -> bool:
        """Return whether the broker answers a metadata request."""
        from confluent_kafka.admin import AdminClient  # deferred: only needed while starting

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        try:
            md = admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure here just means "not yet"
            return False
        return bool(md.brokers)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker by PID (SIGTERM, then SIGKILL); return whether one was running."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            log.warning("Kafka (pid %d) did not stop in %.0fs; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _kafka_cluster_id(seed: str) -> str:
    """Return a Kafka cluster id (base64url of 16 bytes, no padding) from a UUID string."""
    import base64

    return base64.urlsafe_b64encode(uuid.UUID(seed).bytes).decode().rstrip("=")
