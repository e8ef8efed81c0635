"""The Kafka fixtures themselves work against the real broker (no Django needed)."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from tests.kafka_fixtures import (
    BrokerControl,
    create_topic,
    delete_topic,
    read_topic,
    topic_record_count,
    unique_topic_name,
)

pytestmark = pytest.mark.kafka


def test_unique_topic_name_is_valid_and_unique() -> None:
    first = unique_topic_name("test_x[param/with spaces.and:colons]" + "y" * 300)
    second = unique_topic_name("test_x[param/with spaces.and:colons]" + "y" * 300)
    assert first != second
    assert len(first) <= 200
    assert all(char.isalnum() or char in "-_" for char in first)


def test_produce_and_read_back(kafka_bootstrap: str, kafka_topic: str) -> None:
    with KafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        futures = [
            producer.send(kafka_topic, key=f"key-{i}".encode(), value=f"value-{i}".encode())
            for i in range(10)
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=10)

    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=10, timeout=30)

    assert len(records) == 10
    assert sorted((r.key, r.value) for r in records) == [
        (f"key-{i}".encode(), f"value-{i}".encode()) for i in range(10)
    ]
    assert {r.partition for r in records} <= {0, 1, 2}
    assert topic_record_count(kafka_bootstrap, kafka_topic) == 10


def test_private_broker_restart_keeps_records(
    kafka_broker_control: BrokerControl, kafka_bootstrap: str
) -> None:
    bootstrap = kafka_broker_control.bootstrap
    assert bootstrap != kafka_bootstrap  # the shared broker is never stopped
    topic = unique_topic_name("restart")
    create_topic(bootstrap, topic, partitions=1)
    try:
        with KafkaProducer(bootstrap_servers=bootstrap) as producer:
            producer.send(topic, key=b"k", value=b"before-restart").get(timeout=30)

        kafka_broker_control.stop()
        assert not kafka_broker_control.is_running()
        kafka_broker_control.start()

        records = read_topic(bootstrap, topic, expected_count=1, timeout=30)
        assert [(r.key, r.value) for r in records] == [(b"k", b"before-restart")]
    finally:
        delete_topic(bootstrap, topic)
