"""kafka-python's clients, built from the settings: producer, consumers, admin client.

The one module that constructs a kafka-python client (``KafkaProducer``,
``KafkaConsumer``, ``KafkaAdminClient``); the rest of ``kafka/`` is given the
clients built here. librdkafka's producer is in ``confluent.py``.

Imports kafka-python and ``kafka/config.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from django_outbox.conf import outbox_settings
from django_outbox.kafka import metadata
from django_outbox.kafka.config import (
    CONSUMER_DEFAULTS,
    CONSUMER_OUTAGE_DEFAULTS,
    bootstrap_servers,
    producer_config,
)


def build_producer(**overrides: Any) -> KafkaProducer:
    """A producer with ``acks='all'`` and idempotence, plus ``OUTBOX_KAFKA_PRODUCER``.

    Raises ``KafkaTimeoutError`` when no broker answers within ``bootstrap_timeout_ms``.
    """
    config = producer_config(**overrides)
    make_client = config.get("kafka_client", KafkaProducer.DEFAULT_CONFIG["kafka_client"])
    clients: list[Any] = []

    def tracked_client(**kwargs: Any) -> Any:
        client = make_client(**kwargs)
        clients.append(client)
        return client

    try:
        return KafkaProducer(**{**config, "kafka_client": tracked_client})
    except BaseException:
        # kafka-python leaves the network client of a failed constructor open: two
        # sockets per attempt, which a relay retrying against a dead broker would leak.
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        raise


def build_consumer(*topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer in ``OUTBOX_CONSUMER_GROUP``, auto commit off, earliest offset first."""
    config = {
        "bootstrap_servers": bootstrap_servers(),
        "group_id": outbox_settings.consumer_group,
        **CONSUMER_DEFAULTS,
    }
    config.update(outbox_settings.kafka_consumer)
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


def build_admin(**overrides: Any) -> KafkaAdminClient:
    """An admin client on the bootstrap servers (``overrides``: kafka-python's options)."""
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers(), **overrides)


def build_group_consumer(
    topics: Sequence[str], group_id: str, listener: Any = None, **options: Any
) -> KafkaConsumer:
    """``build_consumer`` for the outbox consumer: outage-friendly timeouts, then the settings.

    With ``listener`` (a ``consuming.CommitOnRevoke``), the consumer subscribes with it
    and the listener is given the consumer.

    Raises ``KafkaTimeoutError`` when no broker answers within ``bootstrap_timeout_ms``.
    """
    config = {
        "bootstrap_servers": bootstrap_servers(),
        "group_id": group_id,
        **CONSUMER_DEFAULTS,
        **CONSUMER_OUTAGE_DEFAULTS,
    }
    config.update(outbox_settings.kafka_consumer)
    config.update(options)
    if listener is None:
        consumer = KafkaConsumer(*topics, **config)
    else:
        consumer = KafkaConsumer(**config)
        listener.consumer = consumer
        consumer.subscribe(list(topics), listener=listener)
    # the subscribed topics' metadata before the group's first join (metadata.py)
    metadata.refresh_now(metadata.cluster_of(consumer))
    return consumer


def build_probe_consumer() -> KafkaConsumer:
    """A consumer outside any group, auto commit off, for reading one position by hand."""
    options = {
        k: v
        for k, v in outbox_settings.kafka_consumer.items()
        if k not in ("group_id", "enable_auto_commit", "client_id")
    }
    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers(),
        group_id=None,
        enable_auto_commit=False,
        client_id="django-outbox-probe",
        **{**CONSUMER_OUTAGE_DEFAULTS, **options},
    )
