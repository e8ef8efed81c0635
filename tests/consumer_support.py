"""Helpers of the consumer tests: records built like the relay builds them, test handlers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db.models import F
from django.test import override_settings
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from django_outbox import Event
from django_outbox.consumer import Consumer, Delivery
from django_outbox.kafka import build_consumer, record_headers
from django_outbox.models import OutboxMessage
from django_outbox.registry import registry
from testproject.chat.models import Conversation

from .relay_support import REPO_ROOT, database_url

#: Group membership that starts and ends quickly on the test broker.
FAST_GROUP = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "fetch_max_wait_ms": 100,
}

COUNTER = "test.counter"
BROKEN = "test.broken"


def count_handler(event: Event) -> None:
    """Not idempotent on purpose: a second run shows as a second increment."""
    Conversation.objects.filter(pk=event.data["conversation_id"]).update(
        message_count=F("message_count") + 1
    )


def broken_handler(event: Event) -> None:
    raise RuntimeError(f"broken handler refuses {event.event_id}")


@contextmanager
def registered(
    event_type: str, func: Any, *, batch: bool = False, rerun_safe: bool = False
) -> Iterator[None]:
    registry.register(event_type, func, batch=batch, rerun_safe=rerun_safe)
    try:
        yield
    finally:
        registry.unregister(event_type)


def unique_group() -> str:
    return f"test-consumer-{uuid.uuid4().hex[:10]}"


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def send_rows(
    bootstrap: str,
    topic: str,
    rows: Iterable[OutboxMessage],
    alias: str = "default",
    partition: int | None = None,
) -> None:
    """Send outbox rows as the relay does: key, payload unchanged, the outbox headers."""
    with producer(bootstrap) as client:
        futures = [
            client.send(
                topic,
                key=row.message_key.encode(),
                value=row.payload.encode(),
                headers=record_headers(row, alias, dict(row.event.headers)),
                partition=partition,
            )
            for row in rows
        ]
        client.flush()
        for future in futures:
            future.get(timeout=30)


def send_raw(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
    partition: int | None = 0,
) -> None:
    """Send ``(key, value, headers)`` records, by default all to partition 0 (in order)."""
    with producer(bootstrap) as client:
        futures = [
            client.send(topic, key=key, value=value, headers=headers, partition=partition)
            for key, value, headers in records
        ]
        client.flush()
        for future in futures:
            future.get(timeout=30)


def foreign_record(
    event_type: str, data: Any, key: str = "k"
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """An event published by another service: envelope and event headers, no outbox row here."""
    event = Event(event_type=event_type, data=data, key=key)
    headers = [("event_id", str(event.event_id).encode()), ("event_type", event_type.encode())]
    return key.encode(), event.to_bytes(), headers


def consumer_process(
    bootstrap: str, *args: str, env: dict[str, str] | None = None, output: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``manage.py outbox_consume`` on the test database, in tests/consumer_subprocess.py;
    its output goes to a pipe, or to ``output`` (a file, for a long test)."""
    environment = dict(os.environ)
    environment.update(
        {
            "DATABASE_URL": database_url("default"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
    )
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "consumer_subprocess.py"), *args],
        env=environment,
        cwd=REPO_ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def consume(topic: str, group: str, **options: Any) -> Consumer:
    """Run a burst consumer over ``topic`` and return it (its ``stats`` say what happened)."""
    options.setdefault("burst", True)
    options.setdefault("poll_timeout", 0.2)
    options.setdefault("database_retry_delay", 0.05)
    # The group that owns the outbox rows (see django_outbox/consumer/local.py).
    with override_settings(OUTBOX_CONSUMER_GROUP=options.pop("owning_group", group)):
        consumer = Consumer([topic], group=group, consumer_options=dict(FAST_GROUP), **options)
        consumer.run()
    return consumer


def committed_offsets(topic: str, group: str, partitions: int = 3) -> dict[int, int | None]:
    client = build_consumer(group_id=group, **FAST_GROUP)
    try:
        return {
            p: client.committed(TopicPartition(topic, p), timeout_ms=10000)
            for p in range(partitions)
        }
    finally:
        client.close(autocommit=False)


def handling_settings(settings: Any) -> None:
    """No relay wake-up, ``Handling("g")`` owns the rows, retries due within 0.2 s."""
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_CONSUMER_GROUP = "g"
    settings.OUTBOX_RETRY_BACKOFF_BASE = 0.05
    settings.OUTBOX_RETRY_BACKOFF_MAX = 0.2


def local(row: OutboxMessage, offset: int, partition: int = 0, alias: str = "default") -> Delivery:
    """The delivery of outbox ``row`` of ``alias`` as the relay sends it, from topic ``t``."""
    return Delivery(
        "t",
        partition,
        offset,
        row.message_key.encode(),
        row.payload.encode(),
        tuple(record_headers(row, alias)),
    )
