"""A real HTTP receiver for webhook tests: records every request, answers as a test scripts it."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port

__all__ = ["Received", "Receiver", "Response", "Script"]


@dataclass(frozen=True)
class Response:
    """What the receiver answers: a status, headers and a body, after an optional delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as it arrived, with the status it was answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    started: float
    finished: float
    status: int

    @property
    def key(self) -> str:
        """The object key nbstream put in its routing header."""
        return self.headers.get("X-NBStream-Object-Key", "")

    @property
    def egress_id(self) -> str:
        """The egress id nbstream put in its routing header."""
        return self.headers.get("X-NBStream-Egress-Id", "")

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


# Called with the request (status and finish time not known yet: 0) and its arrival number.
Script = Callable[[Received, int], Response | Awaitable[Response]]


class Receiver:
    """An aiohttp server on a free loopback port, in the test's own event loop."""

    def __init__(self, script: Script | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.script: Script = script or (lambda _req, _n: Response())
        self.tls = tls
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = free_port()
        self._arrivals = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        """Return the URL of ``path`` on this receiver."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> Receiver:
        """Serve until ``stop``."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()
        return self

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        """Answer per the script, then record the request with its status."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.monotonic()
        number = self._arrivals
        self._arrivals += 1
        try:
            body = await request.read()
            seen = Received(request.method, request.path, request.query_string,
                            dict(request.headers), body, started, 0.0, 0)
            answer = self.script(seen, number)
            if not isinstance(answer, Response):
                answer = await answer
            if answer.delay:
                await asyncio.sleep(answer.delay)
        finally:
            self.in_flight -= 1
        self.requests.append(Received(seen.method, seen.path, seen.query, seen.headers,
                                      seen.body, started, time.monotonic(), answer.status))
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    def delivered(self) -> list[Received]:
        """Return the requests answered 2xx, in the order they completed."""
        return [r for r in self.requests if 200 <= r.status < 300]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.02)
