"""Fixtures of the sink tests: a real HTTP receiver in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.sinks.receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A started receiver answering 200 until the test scripts it otherwise."""
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()
