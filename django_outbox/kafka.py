"""The one module that imports the Kafka client (kafka-python).

Everything else asks this module for clients, built from the ``OUTBOX_*``
settings, and for the record format (key, value, headers) of an outbox row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from .conf import outbox_settings
from .envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    RESERVED_HEADERS,
)

if TYPE_CHECKING:
    from .models import OutboxMessage

__all__ = [
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_OUTBOX_DB",
    "HEADER_OUTBOX_ID",
    "RESERVED_HEADERS",
    "KafkaError",
    "KafkaTimeoutError",
    "NewTopic",
    "OffsetAndMetadata",
    "TopicPartition",
    "build_admin",
    "build_consumer",
    "build_producer",
    "record_headers",
]

#: What the outbox needs from a producer; OUTBOX_KAFKA_PRODUCER may override the rest.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "client_id": "django-outbox-relay",
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "client_id": "django-outbox-consumer",
}


def _bootstrap() -> list[str]:
    return outbox_settings.kafka_bootstrap_servers


def producer_config(**overrides: Any) -> dict[str, Any]:
    config = {"bootstrap_servers": _bootstrap(), **PRODUCER_DEFAULTS}
    config.update(outbox_settings.kafka_producer)
    config.update(overrides)
    return config


def build_producer(**overrides: Any) -> KafkaProducer:
    """A producer with ``acks='all'`` and idempotence, plus ``OUTBOX_KAFKA_PRODUCER``."""
    return KafkaProducer(**producer_config(**overrides))


def build_consumer(*topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer in ``OUTBOX_CONSUMER_GROUP``, auto commit off, earliest offset first."""
    config = {
        "bootstrap_servers": _bootstrap(),
        "group_id": outbox_settings.consumer_group,
        **CONSUMER_DEFAULTS,
    }
    config.update(outbox_settings.kafka_consumer)
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


def build_admin(**overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=_bootstrap(), **overrides)


def record_headers(
    message: OutboxMessage, alias: str, extra: dict[str, str] | None = None
) -> list[tuple[str, bytes]]:
    """The headers of the Kafka record for ``message`` (row in database ``alias``).

    ``extra`` are the envelope's own headers; the reserved names always win.
    """
    headers = [
        (name, value.encode())
        for name, value in (extra or {}).items()
        if name not in RESERVED_HEADERS
    ]
    event_id = ""
    try:
        event_id = str(message.event.event_id)
    except Exception:  # a malformed payload still gets delivered; the consumer records it
        pass
    headers += [
        (HEADER_EVENT_ID, event_id.encode()),
        (HEADER_EVENT_TYPE, message.event_type.encode()),
        (HEADER_OUTBOX_ID, str(message.pk).encode()),
        (HEADER_OUTBOX_DB, alias.encode()),
    ]
    return headers
