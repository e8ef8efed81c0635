"""A rebalance takes partitions from a consumer: the offsets of what it handled are
committed first (``kafka.CommitOnRevoke``), so their next owner does not read them again."""

from __future__ import annotations

import logging
import threading

import pytest
from django.test import override_settings

from django_outbox import publish_event
from django_outbox.consumer import Consumer
from django_outbox.kafka import build_consumer
from testproject.chat.models import Conversation

from .consumer_support import (
    COUNTER,
    FAST_GROUP,
    committed_offsets,
    count_handler,
    registered,
    send_rows,
    unique_group,
)
from .relay_support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PER_PARTITION = 4


@pytest.fixture(autouse=True)
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_WAKE_RELAY = False


def join_second_member(topic: str, group: str, seen: dict[int, int | None]) -> None:
    """Join ``group``; once assigned, note what the group has committed for each partition."""
    member = build_consumer(topic, group_id=group, **FAST_GROUP)
    try:
        while not member.assignment():
            member.poll(timeout_ms=200)
        for tp in member.assignment():
            seen[tp.partition] = member.committed(tp, timeout_ms=10000)
    finally:
        member.close(autocommit=False)


def test_offsets_not_yet_committed_are_committed_when_partitions_are_revoked(
    kafka_bootstrap, kafka_topic, monkeypatch, caplog
):
    conversation = Conversation.objects.create(title="rebalance")
    for partition in range(3):
        data = {"conversation_id": conversation.pk}
        rows = [publish_event(COUNTER, data) for _ in range(PER_PARTITION)]
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=partition)
    group = unique_group()
    caplog.set_level(logging.INFO, logger="django_outbox")
    with registered(COUNTER, count_handler), override_settings(OUTBOX_CONSUMER_GROUP=group):
        consumer = Consumer(
            [kafka_topic], group=group, consumer_options=dict(FAST_GROUP), poll_timeout=0.2
        )
        # As while a backlog is read: the commit after a poll waits for commit_interval.
        monkeypatch.setattr(consumer.offsets, "commit", lambda client: None)
        try:
            wait_for(
                lambda: consumer._turn() or consumer.stats.records == 3 * PER_PARTITION,
                60,
                "the records handled",
            )
            assert committed_offsets(kafka_topic, group) == {0: None, 1: None, 2: None}

            seen: dict[int, int | None] = {}
            member = threading.Thread(target=join_second_member, args=(kafka_topic, group, seen))
            member.start()
            wait_for(lambda: consumer._turn() or not member.is_alive(), 60, "the rebalance")
            member.join()
        finally:
            consumer._close()

    assert seen and set(seen.values()) == {PER_PARTITION}, seen
    assert committed_offsets(kafka_topic, group) == {p: PER_PARTITION for p in range(3)}
    assert "before giving them up" in caplog.text
    conversation.refresh_from_db()
    assert conversation.message_count == 3 * PER_PARTITION


def test_offsets_are_committed_once_a_poll_comes_back_empty_not_after_each_record(
    kafka_bootstrap, kafka_topic
):
    # A trickle of records, one per poll, does not wait for a commit after each.
    conversation = Conversation.objects.create(title="trickle")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(3)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    group = unique_group()
    with registered(COUNTER, count_handler), override_settings(OUTBOX_CONSUMER_GROUP=group):
        consumer = Consumer(
            [kafka_topic],
            group=group,
            consumer_options=dict(FAST_GROUP),
            poll_timeout=0.2,
            commit_interval=3600,
        )
        try:
            wait_for(
                lambda: consumer._turn() or consumer.stats.records == 3, 60, "the records handled"
            )
            assert committed_offsets(kafka_topic, group)[0] is None
            assert consumer.offsets.uncommitted

            consumer._turn()  # nothing more comes: the poll is empty, the offsets go
            assert committed_offsets(kafka_topic, group)[0] == 3
            assert not consumer.offsets.uncommitted
        finally:
            consumer._close()
    conversation.refresh_from_db()
    assert conversation.message_count == 3
