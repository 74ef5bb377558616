"""Creates nbstream's topics with the admin client (DESIGN §4: never broker auto-creation)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from schemas.config import Settings
from schemas.topics import Topics

__all__ = ["TOPIC_CONFIG", "ensure_topics", "topic_names"]

log = logging.getLogger(__name__)

# NetBox objects with large config contexts make big payloads; records carry them twice
# (data and message), so allow more than the broker's 1 MB default per record.
TOPIC_CONFIG = {"max.message.bytes": str(8 * 1024 * 1024)}


def topic_names(settings: Settings) -> dict[str, int]:
    """Return every topic this configuration needs, with its partition count."""
    t = Topics(settings.kafka.topic_prefix)
    parts = settings.kafka.partitions
    names = {t.raw: parts, t.invalid: 1}
    for sink in settings.enabled_sinks():
        names[t.sink(sink)] = parts
        names[t.dlq(sink)] = parts
    return names


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are.

    Raises KafkaException when the cluster refuses a topic for any reason but existence.
    """
    admin = AdminClient(settings.kafka.librdkafka())
    wanted = topic_names(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(name, num_partitions=parts,
                 replication_factor=settings.kafka.replication_factor, config=TOPIC_CONFIG)
        for name, parts in wanted.items() if name not in existing
    ]
    if not new:
        return []
    created = []
    for name, fut in admin.create_topics(new, request_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created topics", extra={"topics": created})
    return created
