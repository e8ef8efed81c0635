"""Which producer each worker gets, and how a producer is closed.

The relay's producer is kafka-python's or, with ``OUTBOX_KAFKA_CLIENT =
"confluent"``, librdkafka's (``kafka/confluent.py``, imported here on first use
only, so that confluent-kafka stays an optional extra); the consumer's dead-letter
producer is always kafka-python's.

Imports ``kafka/config.py``, ``kafka/errors.py``, ``kafka/sending.py``,
``kafka/kafka_python.py`` and, lazily, ``kafka/confluent.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_outbox.kafka.config import confluent_config, kafka_client
from django_outbox.kafka.errors import confluent_error
from django_outbox.kafka.kafka_python import build_producer
from django_outbox.kafka.sending import NotSent

if TYPE_CHECKING:
    from kafka import KafkaProducer


def build_relay_producer(**overrides: Any) -> Any:
    """The relay's producer: ``build_producer`` or, with ``OUTBOX_KAFKA_CLIENT = "confluent"``,
    a librdkafka producer with the same settings (see ``confluent_config``)."""
    if kafka_client() != "confluent":
        return build_producer(**overrides)
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.Producer(confluent_config(**overrides), confluent_error, NotSent)


def raw_confluent_producer(**overrides: Any) -> Any:
    """A plain ``confluent_kafka.Producer`` on ``confluent_config`` (bench/relay_bench.py)."""
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.raw_producer(confluent_config(**overrides))


def confluent_version() -> str:
    """The confluent-kafka and librdkafka versions (``confluent.version``)."""
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.version()


def build_dead_letter_producer() -> KafkaProducer:
    """The consumer's producer of dead-letter copies: ``build_producer``, its own client id."""
    return build_producer(client_id="django-outbox-dead-letter")


def close_producer(producer: KafkaProducer, timeout: float = 10.0) -> None:
    """Close ``producer``, waiting up to ``timeout`` seconds for what it still holds."""
    try:
        producer.close(timeout=timeout)
    except Exception:  # closing is best effort; the records are still in the outbox
        pass
