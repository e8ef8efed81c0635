"""A worker's first look at its topics' metadata, against the real broker."""

from __future__ import annotations

import threading

import pytest

from django_outbox import kafka
from django_outbox.kafka import metadata


@pytest.mark.kafka
@pytest.mark.parametrize("listener", [False, True], ids=["topics", "listener"])
def test_a_new_group_consumer_learns_its_topics_without_waiting_out_the_backoff(
    settings, kafka_bootstrap, kafka_topic, listener
):
    """kafka-python holds the refresh after its bootstrap ``retry_backoff_ms`` (100 ms).
    Its metadata takes that backoff from its own defaults, not the consumer's options:
    set to a minute here, a held refresh would not end within the wait below."""
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    revoke = kafka.CommitOnRevoke(lambda partitions: {}, lambda partitions: None)
    consumer = kafka.build_group_consumer(
        [kafka_topic], "test-metadata-group", revoke if listener else None
    )
    consumer._cluster.config["retry_backoff_ms"] = 60_000
    found: list[list[str]] = []
    try:
        looking = threading.Thread(
            target=lambda: found.append(kafka.missing_topics(consumer, [kafka_topic])),
            daemon=True,
        )
        looking.start()
        looking.join(20)
        assert found == [[]], "the first metadata refresh was held back"
    finally:
        consumer.close()


@pytest.mark.kafka
def test_a_new_producer_sends_its_first_records_without_waiting_out_the_backoff(
    settings, kafka_bootstrap, kafka_topic
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    producer = kafka.build_relay_producer()
    metadata.cluster_of(producer).config["retry_backoff_ms"] = 60_000
    outcomes: list[list] = []
    records = [kafka.OutboxRecord(kafka_topic, b"k", b"v", []) for _ in range(3)]
    try:
        sending = threading.Thread(
            target=lambda: outcomes.append(
                kafka.await_acks(producer, kafka.send_batch(producer, records, 15))
            ),
            daemon=True,
        )
        sending.start()
        sending.join(10)
        assert outcomes == [[None, None, None]], "the first send waited out the backoff"
    finally:
        kafka.close_producer(producer)


@pytest.mark.kafka
def test_a_producer_asks_once_per_topic_even_for_a_name_kafka_cannot_have(
    settings, kafka_bootstrap, kafka_topic, monkeypatch
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    producer = kafka.build_relay_producer()
    asked: list[list[str]] = []
    real = metadata.refresh_now
    monkeypatch.setattr(
        metadata,
        "refresh_now",
        lambda cluster, topics, timeout: (
            asked.append(list(topics)) or real(cluster, topics, timeout)
        ),
    )
    try:
        for _ in range(2):
            metadata.learn_topics(producer, {kafka_topic, "bad topic!"}, 1.0)
        assert asked == [sorted([kafka_topic, "bad topic!"])]
        assert metadata.cluster_of(producer).partitions_for_topic(kafka_topic)
    finally:
        kafka.close_producer(producer)


def test_clients_without_kafka_pythons_attributes_are_left_alone():
    class Other:
        pass

    assert metadata.cluster_of(Other()) is None
    metadata.refresh_now(None)
    metadata.learn_topics(Other(), {"t"}, 1.0)
