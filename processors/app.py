"""Builds the Faust app from Settings; nothing else (topics and agents have their own modules)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import faust

from processors import faust_fixes
from schemas.config import KafkaSettings, Settings
from schemas.topics import Topics

__all__ = ["broker_credentials", "create_app"]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Translate the librdkafka-style security passthrough into Faust credentials (or None)."""
    c = kafka.client
    protocol = c.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=c.get("ssl.ca.location"))
        if "ssl.certificate.location" in c:
            context.load_cert_chain(c["ssl.certificate.location"], c.get("ssl.key.location"),
                                    c.get("ssl.key.password"))
        if protocol == "SSL":
            return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=c.get("sasl.username"),
        password=c.get("sasl.password"),
        mechanism=c.get("sasl.mechanism", "PLAIN"),
        ssl_context=context,
    )


def create_app(settings: Settings, on_lost: Callable[[int], None] | None = None) -> faust.App:
    """Return the processor's Faust app: group = ``<prefix>processor``, memory store.
    ``on_lost`` counts raw offsets the broker removed before the consumer read them."""
    faust_fixes.apply()
    kafka = settings.kafka
    brokers = ";".join(f"kafka://{s}" for s in kafka.servers.split(","))
    app = faust.App(
        Topics(kafka.topic_prefix).processor_group(),
        broker=brokers,
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        datadir=str(settings.processor.data_dir),
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=8 * 1024 * 1024,
        # Faust commits acknowledged offsets only; the route agent acknowledges a record when
        # the broker stored its outputs (processors.agents), so this only bounds how much is
        # routed again after a crash, not the latency.
        broker_commit_interval=settings.processor.commit_interval,
        broker_commit_every=5_000,
        broker_session_timeout=settings.processor.session_timeout,
        broker_heartbeat_interval=settings.processor.heartbeat_interval,
        # Faust reads its settings from the environment too, ahead of the ones passed here
        # (BROKER_URL, APP_DATADIR, ...: a BROKER_URL meant for Celery would redirect the
        # processor). nbstream's configuration is the only source.
        env={},
    )
    p = settings.processor
    faust_fixes.configure(app, fetch_max_wait=p.fetch_max_wait,
                          fetch_min_bytes=p.fetch_min_bytes, on_lost=on_lost)
    return app
