"""``nbstream replay FILE``: post NetBox webhook payloads to ingest, signed like NetBox signs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx

from producers.signature import sign

__all__ = ["load_bodies", "replay"]


def load_bodies(path: Path) -> list[bytes]:
    """Return the bodies in ``path``: a captured JSONL (``body`` per line) or one JSON payload."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        bodies = []
        for line in text.splitlines():
            if line.strip():
                item = json.loads(line)
                bodies.append((item["body"] if "body" in item else json.dumps(item)).encode())
        return bodies
    return [text.encode()]


def replay(
    bodies: list[bytes], url: str, secret: str | None, timeout: float = 10.0
) -> Counter[int]:
    """POST each body in order, signed with ``secret`` if given; return a count per status."""
    statuses: Counter[int] = Counter()
    with httpx.Client(timeout=timeout) as client:
        for body in bodies:
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["X-Hook-Signature"] = sign(body, secret)
            statuses[client.post(url, content=body, headers=headers).status_code] += 1
    return statuses
