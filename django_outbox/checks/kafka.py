"""Checks of the Kafka settings: the brokers, the client options, which client (E001, E008,
W002, E080, E081, W080)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import outbox_settings

CLIENTS = ("kafka-python", "confluent")


def check_bootstrap_servers(**kwargs: Any) -> list[CheckMessage]:
    value = outbox_settings.raw("KAFKA_BOOTSTRAP_SERVERS")
    servers = value.split(",") if isinstance(value, str) else value
    ok = isinstance(servers, list | tuple) and bool(servers)
    ok = ok and all(isinstance(s, str) and s.strip().rpartition(":")[2].isdigit() for s in servers)
    if ok:
        return []
    return [
        Error(
            f"OUTBOX_KAFKA_BOOTSTRAP_SERVERS is {value!r}.",
            hint="Set it to 'host:port' strings: a list, or one comma-separated string.",
            id="django_outbox.E001",
        )
    ]


def check_client_options(**kwargs: Any) -> list[CheckMessage]:
    """E008: producer or consumer options that are not a dict; W002: a producer that may
    lose what it acknowledged."""
    messages: list[CheckMessage] = []
    for name in ("KAFKA_PRODUCER", "KAFKA_CONSUMER"):
        value = outbox_settings.raw(name)
        if not isinstance(value, dict):
            messages.append(
                Error(
                    f"OUTBOX_{name} must be a dict of kafka-python options, "
                    f"not {type(value).__name__}.",
                    hint="For example {'compression_type': 'gzip'}.",
                    id="django_outbox.E008",
                )
            )
    producer = outbox_settings.raw("KAFKA_PRODUCER")
    if isinstance(producer, dict) and (
        producer.get("acks", "all") not in ("all", -1)
        or producer.get("enable_idempotence", True) is False
    ):
        messages.append(
            Warning(
                "OUTBOX_KAFKA_PRODUCER weakens delivery (acks other than 'all', or "
                "enable_idempotence=False).",
                hint="A row may then be marked published although Kafka lost it; "
                "keep acks='all' and the idempotent producer.",
                id="django_outbox.W002",
            )
        )
    return messages


def check_kafka_client(**kwargs: Any) -> list[CheckMessage]:
    """E080: unknown OUTBOX_KAFKA_CLIENT, or "confluent" without confluent-kafka;
    E081: producer options that "confluent" cannot take; W080: options that weaken it."""
    from django_outbox import kafka

    client = outbox_settings.raw("KAFKA_CLIENT")
    if client not in CLIENTS:
        return [
            Error(
                f"OUTBOX_KAFKA_CLIENT is {client!r}.",
                hint=f"Use one of {', '.join(repr(c) for c in CLIENTS)}.",
                id="django_outbox.E080",
            )
        ]
    if client != "confluent":
        return []
    if not kafka.confluent_available():
        return [
            Error(
                'OUTBOX_KAFKA_CLIENT is "confluent" but confluent-kafka is not installed.',
                hint='pip install "django-outbox[confluent]" (or ".[confluent]" from a checkout), '
                'or use "kafka-python".',
                id="django_outbox.E080",
            )
        ]
    return _confluent_options() + _producer_options_confluent_cannot_take()


def _confluent_options() -> list[CheckMessage]:
    """E081: OUTBOX_CONFLUENT_OPTIONS not a dict; W080: options that may lose a record."""
    options = outbox_settings.raw("CONFLUENT_OPTIONS")
    if not isinstance(options, dict):
        return [
            Error(
                f"OUTBOX_CONFLUENT_OPTIONS must be a dict of librdkafka options, "
                f"not {type(options).__name__}.",
                hint="For example {'compression.type': 'lz4'}.",
                id="django_outbox.E081",
            )
        ]
    if options.get("acks", -1) not in ("all", -1, "-1") or options.get(
        "enable.idempotence", True
    ) in (False, "false"):
        return [
            Warning(
                "OUTBOX_CONFLUENT_OPTIONS weakens delivery (acks other than all, or "
                "enable.idempotence false).",
                hint="A row may then be marked published although Kafka lost it; "
                "keep acks=all and the idempotent producer.",
                id="django_outbox.W080",
            )
        ]
    return []


def _producer_options_confluent_cannot_take() -> list[CheckMessage]:
    """E081: kafka-python producer options with no librdkafka name."""
    from django_outbox import kafka

    producer = outbox_settings.raw("KAFKA_PRODUCER")
    unknown = kafka.untranslatable_options(producer) if isinstance(producer, dict) else []
    if not unknown:
        return []
    return [
        Error(
            f"OUTBOX_KAFKA_PRODUCER option(s) {', '.join(unknown)} have no librdkafka "
            'name, and OUTBOX_KAFKA_CLIENT is "confluent".',
            hint="Give them in librdkafka's names in OUTBOX_CONFLUENT_OPTIONS "
            "(README, 'Kafka client').",
            id="django_outbox.E081",
        )
    ]
