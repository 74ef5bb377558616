"""Publishes the route agent's outputs in batches and reports one acknowledgement per batch.

The agent routes a batch of raw records, hands every output of the batch to ``publish`` and
acknowledges the raw records to Faust only when the returned future resolves, i.e. when the
broker stored every output (idempotent, ``acks=all``). Faust commits acknowledged offsets only,
so "commit the input only after its outputs are acknowledged" (DESIGN §9) holds without Faust's
publish-on-commit attachments, and outputs leave as soon as they are routed instead of at the
next commit.

librdkafka does the producing: one ``produce`` call per output costs a few µs, where Faust's
own producer path (aiokafka, a future and an attachment per record) cost ~150 µs per record on
the reference host. One background thread serves delivery reports; a batch wakes the event
loop once, when its last report arrived.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, Producer

from schemas.config import Settings

__all__ = ["KafkaPublisher", "Output", "PublishError", "Publisher", "publisher_config"]

log = logging.getLogger(__name__)

# Matches the topics' max.message.bytes (nbstream.admin): records carry the object twice.
_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class Output(NamedTuple):
    """One record the agent sends: to ``topic``, keyed like its input; ``partition`` -1 means
    the key's partition (murmur2); table changelogs name theirs, as Faust places them."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    partition: int = -1


class PublishError(Exception):
    """The broker did not store an output; its batch must not be acknowledged."""


class Publisher(Protocol):
    """Where the agent's outputs go; tests may publish to in-memory channels instead."""

    async def publish(self, outputs: Sequence[Output]) -> asyncio.Future[None]:
        """Hand ``outputs`` over in order; the future resolves when all are stored and fails
        with PublishError if any is not."""
        ...

    def close(self, timeout: float) -> None:
        """Deliver what is queued (up to ``timeout`` seconds) and release the client."""
        ...


def publisher_config(settings: Settings) -> dict[str, Any]:
    """Return the librdkafka config of the processor's output producer (TLS/SASL passthrough
    from ``kafka.client``; the guarantees cannot be overridden)."""
    return {
        "client.id": "nbstream-processor",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.max.bytes": _MAX_MESSAGE_BYTES,
        # Same partition for a key as Faust/aiokafka and Java clients chose (murmur2).
        "partitioner": "murmur2_random",
        **settings.kafka.librdkafka(),
        "enable.idempotence": True,
        "acks": "all",
        "allow.auto.create.topics": False,
    }


class _Batch:
    """Counts one batch's delivery reports down (on the poll thread) and settles its future."""

    __slots__ = ("_error", "_fut", "_left", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None],
                 size: int) -> None:
        self._loop, self._fut, self._left = loop, fut, size
        self._error: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self._error is None:
            self._error = err
        self._left -= 1
        if self._left == 0:
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self._fut.done():
            return
        if self._error is None:
            self._fut.set_result(None)
        else:
            self._fut.set_exception(PublishError(f"output not stored: {self._error.str()}"))


class KafkaPublisher:
    """An idempotent, acks=all librdkafka producer with one future per published batch."""

    def __init__(self, config: dict[str, Any], poll_interval: float = 0.1) -> None:
        self._producer = Producer({**config, "error_cb": self._on_error,
                                   "logger": logging.getLogger("processors.librdkafka")})
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nbstream-publisher",
                                        daemon=True)
        self._thread.start()

    async def publish(self, outputs: Sequence[Output]) -> asyncio.Future[None]:
        """Produce ``outputs`` in order; wait (without blocking the loop) while librdkafka's
        local queue is full. Return the batch's acknowledgement future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not outputs:
            fut.set_result(None)
            return fut
        on_delivery = _Batch(loop, fut, len(outputs)).on_delivery
        produce = self._producer.produce
        for out in outputs:
            while True:
                try:
                    produce(out.topic, out.value, out.key, out.partition, headers=out.headers,
                            on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: the poll thread drains it
                    await asyncio.sleep(0.005)
        return fut

    def close(self, timeout: float) -> None:
        """Stop the poll thread, deliver what is queued within ``timeout``, log what is not."""
        self._stopping.set()
        self._thread.join()
        left = self._producer.flush(timeout)
        if left:
            log.warning("%d processor outputs not delivered before shutdown; their inputs are "
                        "not committed and are routed again on restart", left)

    def _serve(self) -> None:
        """Serve delivery reports until closed (callbacks run on this thread)."""
        while not self._stopping.is_set():
            self._producer.poll(self._poll_interval)

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        """Log client-level errors; librdkafka retries them itself unless fatal."""
        if err.fatal():
            log.error("processor producer fatal error: %s", err.str())
        else:
            log.warning("processor producer: %s", err.str())
