"""The consumer against the real broker when Kafka misbehaves: codecs, commits, outages."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.db import connections
from kafka import KafkaProducer

from django_outbox import kafka, publish_event
from django_outbox.consumer import Consumer
from django_outbox.kafka import record_headers
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import RejectedRecord
from testproject.chat.models import Conversation

from .consumer_support import (
    COUNTER,
    FAST_GROUP,
    committed_offsets,
    consume,
    count_handler,
    registered,
    send_rows,
    unique_group,
)
from .kafka_fixtures import create_topic, delete_topic, unique_topic_name

pytestmark = [pytest.mark.kafka, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_WAKE_RELAY = False
    return settings


def send_compressed(bootstrap, topic, rows, codec):
    with KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50, acks="all"
    ) as producer:
        futures = [
            producer.send(
                topic,
                key=row.message_key.encode(),
                value=row.payload.encode(),
                headers=record_headers(row, "default"),
                partition=0,
            )
            for row in rows
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=30)


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_records_compressed_with_each_codec_are_handled(kafka_bootstrap, kafka_topic, codec):
    conversation = Conversation.objects.create(title=f"codec {codec}")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(5)]
    send_compressed(kafka_bootstrap, kafka_topic, rows, codec)
    group = unique_group()
    with registered(COUNTER, count_handler):
        consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"handled": 5}
    conversation.refresh_from_db()
    assert conversation.message_count == 5
    assert OutboxMessage.objects.consumed().count() == 5


def test_a_record_the_client_cannot_decode_is_rejected_and_passed(
    kafka_bootstrap, kafka_topic, monkeypatch
):
    conversation = Conversation.objects.create(title="undecodable")
    snappy_rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(2)]
    plain_rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(2)]
    send_compressed(kafka_bootstrap, kafka_topic, snappy_rows, "snappy")
    send_rows(kafka_bootstrap, kafka_topic, plain_rows, partition=0)
    # As on a machine without python-snappy: kafka-python raises UnsupportedCodecError.
    import kafka.codec

    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)
    group = unique_group()
    with registered(COUNTER, count_handler):
        consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"rejected": 2, "handled": 2}
    rejected = RejectedRecord.objects.filter(consumer_group=group).order_by("offset")
    assert [r.offset for r in rejected] == [0, 1]
    assert all("UnsupportedCodecError" in r.error for r in rejected)
    assert committed_offsets(kafka_topic, group)[0] == 4
    assert [OutboxMessage.objects.get(pk=r.pk).status for r in plain_rows] == [Status.CONSUMED] * 2


def test_an_offset_commit_timeout_is_retried_not_fatal(kafka_bootstrap, kafka_topic, monkeypatch):
    conversation = Conversation.objects.create(title="commit")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(3)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    real, calls = kafka.commit_offsets, []

    def flaky(client, offsets, timeout_ms=10_000):
        calls.append({tp.partition: offset for tp, offset in offsets.items()})
        if len(calls) == 1:
            raise kafka.KafkaTimeoutError("the coordinator did not answer")
        return real(client, offsets, timeout_ms)

    monkeypatch.setattr(kafka, "commit_offsets", flaky)
    group = unique_group()
    with registered(COUNTER, count_handler):
        consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"handled": 3}
    assert calls[0] == {0: 3} and calls[1] == {0: 3}  # kept, and committed again
    assert committed_offsets(kafka_topic, group)[0] == 3


def test_a_commit_refused_after_a_rebalance_is_not_fatal(kafka_bootstrap, kafka_topic, monkeypatch):
    rows = [publish_event(COUNTER, {"conversation_id": 0}) for _ in range(2)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)

    def refused(client, offsets, timeout_ms=10_000):
        raise kafka.CommitFailedError("the group rebalanced")

    monkeypatch.setattr(kafka, "commit_offsets", refused)
    with registered(COUNTER, lambda event: None):
        consumer = consume(kafka_topic, unique_group())
    assert consumer.stats.outcomes == {"handled": 2}


def test_the_consumer_starts_while_the_broker_is_down_and_recovers(
    settings, kafka_broker_control, caplog
):
    caplog.set_level(logging.INFO, logger="django_outbox")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_broker_control.bootstrap
    topic = unique_topic_name("outage")
    create_topic(kafka_broker_control.bootstrap, topic, partitions=1)
    settings.OUTBOX_DEFAULT_TOPIC = topic
    conversation = Conversation.objects.create(title="outage")
    beats = []
    settings.OUTBOX_CONSUMER_GROUP = group = unique_group()
    consumer = Consumer(
        [topic],
        group=group,
        poll_timeout=0.2,
        consumer_options=dict(FAST_GROUP),
        heartbeat=lambda: beats.append(time.monotonic()),
        broker_retry_max_delay=1.0,
        client_stall_timeout=10.0,
    )
    errors = []

    def run():
        try:
            consumer.run()
        except BaseException as exc:  # the test fails on any
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's own connections

    try:
        kafka_broker_control.stop()
        with registered(COUNTER, count_handler):
            thread = threading.Thread(target=run)
            thread.start()
            deadline = time.monotonic() + 30
            while not any("unreachable" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no 'unreachable' line"
                time.sleep(0.1)
            waiting = len(beats)
            time.sleep(2)
            assert len(beats) > waiting  # the heartbeat goes on while the broker is away
            assert thread.is_alive()
            kafka_broker_control.start()
            rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(3)]
            send_rows(kafka_broker_control.bootstrap, topic, rows, partition=0)
            deadline = time.monotonic() + 90
            while OutboxMessage.objects.consumed().count() < 3:
                assert time.monotonic() < deadline, "not handled after the broker came back"
                assert thread.is_alive(), errors
                time.sleep(0.2)
            # Cut off again while connected: the loop survives, then goes on.
            kafka_broker_control.stop()
            time.sleep(3)
            assert thread.is_alive(), errors
            kafka_broker_control.start()
            more = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(2)]
            send_rows(kafka_broker_control.bootstrap, topic, more, partition=0)
            deadline = time.monotonic() + 90
            while OutboxMessage.objects.consumed().count() < 5:
                assert time.monotonic() < deadline, "not handled after the second outage"
                assert thread.is_alive(), errors
                time.sleep(0.2)
            consumer.stop()
            thread.join(30)
            assert not thread.is_alive()
    finally:
        consumer.stop()
        kafka_broker_control.start()
        delete_topic(kafka_broker_control.bootstrap, topic)
    assert errors == []
    unreachable = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert f"broker {kafka_broker_control.bootstrap} unreachable" in unreachable[0]
    conversation.refresh_from_db()
    assert conversation.message_count == 5
