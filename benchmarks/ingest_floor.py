"""The HTTP server's own ceiling for ingest: uvicorn with uvloop and httptools, as ingest runs,
serving an ASGI app that reads each body and answers 202 at once (200 to a GET, for
readiness): no signature, JSON, Avro, metrics or Kafka. Its rate next to ingest's shows how
much of ingest's cost is the server's.

    python -m uvicorn benchmarks.ingest_floor:app --workers 2 --port PORT
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]
_BODY = b'{"status":"accepted"}'


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Read the request body, answer 202 (200 to a GET); serve the lifespan protocol."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 202 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
