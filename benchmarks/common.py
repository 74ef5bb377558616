"""What every benchmark stage shares: the bench context, the Go load tool, payloads, configs.

The runner (``benchmarks/run.py``) builds one ``Bench``: an embedded broker on free ports in a
temporary directory, the number of runs, and whether this is the ``--quick`` smoke version.
Stages start nbstream as real processes (``tests/e2e/harness.py``'s ``nbstream_processes``) and
drive them with ``loadgen`` (``benchmarks/loadgen``, Go), which generates HTTP load and receives
webhooks at a small CPU cost next to the Python stages it measures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker, cache_dir
from schemas.config import Settings, parse_settings
from tests.conftest import FIXTURE_SECRET, FIXTURES, free_port
from tests.e2e.harness import e2e_base

__all__ = [
    "FIXTURE_SECRET",
    "background",
    "OBJECT_SENTINEL",
    "SEQ_SENTINEL",
    "Bench",
    "GoReceiver",
    "base_config",
    "cpu_seconds",
    "fixture_templates",
    "free_port",
    "go_receiver",
    "loadavg",
    "loadgen_binary",
    "read_arrivals",
    "run_load",
    "stop",
    "unique_templates",
]

LOADGEN_SOURCE = Path(__file__).resolve().with_name("loadgen")
REPO = LOADGEN_SOURCE.parent.parent
# Replaced per request by ``loadgen load -unique``: the object id and the request id.
OBJECT_SENTINEL = 900000001
SEQ_SENTINEL = "__NBSEQ__"


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU seconds (user + system) used so far by ``pids`` and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, total = set(pids), 0.0
    changed = True
    while changed:  # close over descendants (uvicorn's workers are children of its supervisor)
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def loadavg() -> str:
    """Return the first three fields of /proc/loadavg (1, 5 and 15 minute load averages)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


@dataclass
class Bench:
    """One benchmark session: the broker, a scratch directory, and how much to measure."""

    broker: LocalBroker
    tmp: Path
    runs: int
    quick: bool
    log: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        """Print a progress line (and keep it for the results' notes)."""
        line = f"[{datetime.now(UTC):%H:%M:%S}] {message}"
        print(line, flush=True)
        self.log.append(line)

    def scratch(self, name: str) -> Path:
        """Return a fresh directory for one case."""
        path = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def prefix(self) -> str:
        """Return a fresh topic prefix, so cases never share topics or consumer groups."""
        return f"b{uuid.uuid4().hex[:8]}."

    def settings(self, config: dict[str, Any]) -> Settings:
        """Return the typed settings of ``config`` and create its topics on the broker."""
        settings = parse_settings(config, env={})
        ensure_topics(settings)
        return settings


def base_config(bench: Bench, prefix: str, tmp: Path) -> dict[str, Any]:
    """Return the config sections every stage shares (the end-to-end tests' sections with the
    bench's NetBox id and environment, 6 partitions, a free ingest port); stages add sinks and
    rules."""
    config = e2e_base(bench.broker, prefix, tmp, free_port())
    config["netbox"]["id"] = "nb-bench"
    config["environment"] = "bench"
    config["kafka"]["partitions"] = 6
    return config


def fixture_lines() -> list[dict[str, Any]]:
    """Return the captured NetBox 4.6.8 webhooks (``seq``, ``headers``, ``body``...)."""
    return [json.loads(line) for line in FIXTURES.read_text().splitlines() if line.strip()]


def fixture_templates() -> list[dict[str, str]]:
    """Return every captured webhook body with the signature NetBox sent, byte for byte."""
    out = []
    for line in fixture_lines():
        sig = next(v for k, v in line["headers"] if k.lower() == "x-hook-signature")
        out.append({"body": line["body"], "signature": sig})
    return out


def unique_templates(object_type: str | None = None, event: str | None = None,
                     ) -> list[dict[str, str]]:
    """Return the captured object events as templates ``loadgen -unique`` makes distinct.

    Each gets the object id and request id sentinels, so every request becomes a new object
    event with its own ``source_id`` and object key. ``object_type`` and ``event`` filter.
    """
    out = []
    for line in fixture_lines():
        payload = json.loads(line["body"])
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            continue
        if (object_type and payload["object_type"] != object_type) or (
                event and payload["event"] != event):
            continue
        data["id"] = OBJECT_SENTINEL
        payload["request_id"] = SEQ_SENTINEL
        if isinstance(payload.get("request"), dict):
            payload["request"]["id"] = SEQ_SENTINEL
        out.append({"body": json.dumps(payload), "signature": ""})
    return out


def loadgen_binary() -> Path:
    """Return the ``loadgen`` binary, building it with Go (no dependencies) when it changed."""
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod"):
        digest.update((LOADGEN_SOURCE / name).read_bytes())
    binary = cache_dir() / "loadgen" / digest.hexdigest()[:16] / "loadgen"
    if os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go is needed to build benchmarks/loadgen; install it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".{os.getpid()}")
    subprocess.run([go, "build", "-buildvcs=false", "-o", str(tmp), "."], cwd=LOADGEN_SOURCE,
                   check=True,
                   env={**os.environ, "CGO_ENABLED": "0"})
    tmp.rename(binary)
    return binary


def run_load(url: str, templates: list[dict[str, str]], tmp: Path, *, concurrency: int,
             duration: float, rate: float = 0, unique: bool = False, objects: int = 5000,
             accepted: Path | None = None) -> dict[str, Any]:
    """Run ``loadgen load`` (its own process) for ``duration`` seconds; return its JSON
    summary."""
    path = tmp / f"templates-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(templates), encoding="utf-8")
    cmd = [str(loadgen_binary()), "load", "-url", url, "-templates", str(path),
           "-concurrency", str(concurrency), "-duration", f"{duration}s", "-rate", str(rate)]
    if unique:
        cmd += ["-unique", "-secret", FIXTURE_SECRET, "-objects", str(objects),
                "-run", uuid.uuid4().hex[:8]]
    if accepted is not None:
        cmd += ["-accepted", str(accepted)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` (one this benchmark started), SIGKILL it if it outlives ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def background(cmd: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` from the repository root with its output in ``log_path``; stop it after."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        proc.log_path = str(log_path)  # type: ignore[attr-defined]  # read by assert_alive
        try:
            yield proc
        finally:
            stop(proc)


def read_arrivals(text: str) -> dict[str, int]:
    """Return source id -> first time (unix ns) of loadgen's ``source_id unix_ns`` lines."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        sid, _, at = line.partition(" ")
        out.setdefault(sid, int(at))
    return out


class GoReceiver:
    """``loadgen receive`` in its own process: a webhook receiver that notes arrival times."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(loadgen_binary()), "receive"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        if len(words) != 2 or words[0] != "LISTEN":
            self.proc.kill()
            raise RuntimeError(f"loadgen receive did not start: {words}")
        self.port = int(words[1])
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def url(self, path: str = "/hook") -> str:
        """Return the URL deliveries go to."""
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self) -> int:
        """Return how many deliveries arrived so far."""
        return int(self.client.get("/count").text)

    def arrivals(self) -> dict[str, int]:
        """Return source id -> first arrival (unix ns) of every delivery so far."""
        return read_arrivals(self.client.get("/dump").text)

    def reset(self) -> None:
        """Forget the deliveries so far."""
        self.client.get("/reset")

    def wait_for(self, count: int, timeout: float, idle: float = 15.0) -> int:
        """Wait until ``count`` deliveries arrived, or nothing arrived for ``idle`` seconds,
        or ``timeout``; return how many arrived."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.count()
            if got >= count:
                return got
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            time.sleep(0.05)
        return self.count()

    def close(self) -> None:
        """Stop the receiver by its PID."""
        self.client.close()
        stop(self.proc, timeout=10)


@contextmanager
def go_receiver() -> Iterator[GoReceiver]:
    """Run a GoReceiver for the duration of the block."""
    rec = GoReceiver()
    try:
        yield rec
    finally:
        rec.close()
