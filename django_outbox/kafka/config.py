"""The clients' configuration, read from the ``OUTBOX_*`` settings at each call.

Owns the defaults the outbox needs of a producer and a consumer, the bootstrap
servers, the switch between the two producer clients (``OUTBOX_KAFKA_CLIENT``), the
translation of kafka-python's producer options into librdkafka's names, and the
secrets of those options that never go into a log line.

Imports the settings only: no Kafka client, no other module of ``kafka/``.
"""

from __future__ import annotations

from typing import Any

from django_outbox.conf import outbox_settings

#: What the outbox needs from a producer; OUTBOX_KAFKA_PRODUCER may override the rest.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "client_id": "django-outbox-relay",
    # kafka-python waits 30-120 s by default; a relay must give up well within its
    # lease (OUTBOX_LEASE_SECONDS, 60 s), so that it records the failure itself.
    "bootstrap_timeout_ms": 10_000,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 30_000,
    # A batch of 500 rows of ~1 KB fills 16 KB batches in no time; bigger batches
    # mean fewer produce requests per relay batch.
    "batch_size": 256 * 1024,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "client_id": "django-outbox-consumer",
}


#: What a consumer needs to live through broker outages; OUTBOX_KAFKA_CONSUMER may
#: override them. kafka-python's defaults wait 30 s to bootstrap (deaf to SIGTERM
#: meanwhile) and back off reconnects up to 30 s (slow to see the broker back).
CONSUMER_OUTAGE_DEFAULTS: dict[str, Any] = {
    "bootstrap_timeout_ms": 5_000,
    "reconnect_backoff_max_ms": 2_000,
}


def bootstrap_servers() -> list[str]:
    """``OUTBOX_KAFKA_BOOTSTRAP_SERVERS``."""
    return outbox_settings.kafka_bootstrap_servers


def producer_config(**overrides: Any) -> dict[str, Any]:
    """kafka-python producer options: ``PRODUCER_DEFAULTS``, then ``OUTBOX_KAFKA_PRODUCER``."""
    config = {"bootstrap_servers": bootstrap_servers(), **PRODUCER_DEFAULTS}
    config.update(outbox_settings.kafka_producer)
    config.update(overrides)
    return config


#: kafka-python producer options (OUTBOX_KAFKA_PRODUCER, PRODUCER_DEFAULTS) and their
#: librdkafka names, for ``OUTBOX_KAFKA_CLIENT = "confluent"``.
CONFLUENT_NAMES: dict[str, str] = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "acks": "acks",
    "enable_idempotence": "enable.idempotence",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "request_timeout_ms": "request.timeout.ms",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "compression_type": "compression.type",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "max_request_size": "message.max.bytes",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}
#: kafka-python options that mean nothing to librdkafka (it connects lazily and never
#: blocks ``produce``): left out.
CONFLUENT_IGNORED = frozenset(
    {"bootstrap_timeout_ms", "max_block_ms", "kafka_client", "api_version", "retries"}
)


def kafka_client() -> str:
    """``OUTBOX_KAFKA_CLIENT``: ``"kafka-python"`` (default) or ``"confluent"``."""
    return outbox_settings.kafka_client


def confluent_available() -> bool:
    """True when confluent-kafka can be imported (the ``confluent`` extra)."""
    import importlib.util

    return importlib.util.find_spec("confluent_kafka") is not None


def untranslatable_options(options: dict[str, Any]) -> list[str]:
    """The kafka-python producer options that have no librdkafka name here."""
    return sorted(k for k in options if k not in CONFLUENT_NAMES and k not in CONFLUENT_IGNORED)


def confluent_config(**overrides: Any) -> dict[str, Any]:
    """``producer_config`` in librdkafka's names, then ``OUTBOX_CONFLUENT_OPTIONS`` on top.

    Raises ``ValueError`` for a kafka-python option without a librdkafka name (check
    ``django_outbox.E081`` says so at start-up).
    """
    config = producer_config(**overrides)
    unknown = untranslatable_options(config)
    if unknown:
        raise ValueError(
            f"OUTBOX_KAFKA_PRODUCER option(s) {unknown} have no librdkafka name; "
            "give them in librdkafka's names in OUTBOX_CONFLUENT_OPTIONS"
        )
    translated: dict[str, Any] = {}
    for name, value in config.items():
        if name in CONFLUENT_IGNORED:
            continue
        if name == "bootstrap_servers" and not isinstance(value, str):
            value = ",".join(value)
        if name == "acks" and value == "all":
            value = -1
        translated[CONFLUENT_NAMES[name]] = value
    # The idempotent producer keeps key order with up to 5 requests in flight.
    translated.setdefault("max.in.flight.requests.per.connection", 5)
    translated.update(outbox_settings.confluent_options)
    return translated


#: Client options whose values never go into a log line.
SECRET_OPTIONS = ("sasl_plain_password", "ssl_password", "sasl_kerberos_password")


def redact(text: str) -> str:
    """``text`` without any secret of the Kafka client settings in it (for log lines)."""
    for options in (outbox_settings.kafka_consumer, outbox_settings.kafka_producer):
        for key in SECRET_OPTIONS:
            secret = options.get(key)
            if isinstance(secret, str) and secret:
                text = text.replace(secret, "***")
    return text
