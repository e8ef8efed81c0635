"""The consumer against the real broker and database: once-only effects, failures, offsets."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.consumer import Consumer
from django_outbox.consumer.retrying import Retrying
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from testproject.chat.models import ChatHistory, Conversation
from testproject.chat.services import post_message

from .consumer_support import (
    BROKEN,
    COUNTER,
    broken_handler,
    committed_offsets,
    consume,
    count_handler,
    foreign_record,
    registered,
    send_raw,
    send_rows,
    unique_group,
)

pytestmark = [pytest.mark.kafka, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_WAKE_RELAY = False  # records are sent by the test, deterministically
    settings.OUTBOX_RETRY_BACKOFF_BASE = 0.05
    settings.OUTBOX_RETRY_BACKOFF_MAX = 0.2
    return settings


@pytest.fixture
def group():
    return unique_group()


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="consumer tests")


def publish_counted(conversation, n, **kwargs):
    return [
        publish_event(COUNTER, {"conversation_id": conversation.pk, "n": i}, **kwargs)
        for i in range(n)
    ]


def wait_until_due(row):
    row.refresh_from_db()
    while timezone.now() <= row.next_retry_at:
        time.sleep(0.05)


def message_count(conversation):
    conversation.refresh_from_db()
    return conversation.message_count


@pytest.mark.parametrize("wake", [False, True], ids=["polling", "woken"])
def test_end_to_end_chat_history(settings, kafka_topic, group, conversation, wake):
    settings.OUTBOX_WAKE_RELAY = wake
    rows = [post_message(conversation, "ann", f"hello {i}") for i in range(6)]
    call_command("outbox_relay", "--burst", verbosity=0)
    assert OutboxMessage.objects.published().count() == 6

    consumer = consume(kafka_topic, group)

    assert consumer.stats.records == 6
    assert ChatHistory.objects.count() == 6
    assert set(ChatHistory.objects.values_list("event_id", flat=True)) == {
        row.event.event_id for row in rows
    }
    for row in OutboxMessage.objects.all():
        assert row.status == Status.CONSUMED
        assert row.consumed_at is not None and row.published_at is not None
        assert row.retry_count == 0
    assert sum(o or 0 for o in committed_offsets(kafka_topic, group).values()) == 6


def test_local_rows_repeat_deliveries_have_no_second_effect(
    kafka_bootstrap, kafka_topic, group, conversation
):
    with registered(COUNTER, count_handler):
        rows = publish_counted(conversation, 4)
        for _ in range(3):  # the same records, three times over
            send_rows(kafka_bootstrap, kafka_topic, rows)
        consumer = consume(kafka_topic, group)

        assert consumer.stats.outcomes == {"handled": 4, "duplicate": 8}
        assert message_count(conversation) == 4
        assert OutboxMessage.objects.consumed().count() == 4

        # Re-sent after the consumer committed: still nothing new.
        send_rows(kafka_bootstrap, kafka_topic, rows)
        consumer = consume(kafka_topic, group)
        assert consumer.stats.outcomes == {"duplicate": 4}
        assert message_count(conversation) == 4
        assert InboxEntry.objects.count() == 0


def test_inbox_events_repeat_deliveries_have_no_second_effect(
    kafka_bootstrap, kafka_topic, group, conversation
):
    with registered(COUNTER, count_handler):
        records = [foreign_record(COUNTER, {"conversation_id": conversation.pk}) for _ in range(3)]
        send_raw(kafka_bootstrap, kafka_topic, records * 3)
        consumer = consume(kafka_topic, group)
        assert consumer.stats.outcomes == {"handled": 3, "duplicate": 6}
        assert message_count(conversation) == 3
        assert InboxEntry.objects.filter(consumer_group=group).count() == 3

        # Another consumer group handles them again, once: the inbox is per group.
        consumer = consume(kafka_topic, unique_group())
        assert consumer.stats.outcomes == {"handled": 3, "duplicate": 6}
        assert message_count(conversation) == 6


def test_same_alias_and_id_from_another_service_goes_to_the_inbox(
    kafka_bootstrap, kafka_topic, group, conversation
):
    with registered(COUNTER, count_handler):
        (ours,) = publish_counted(conversation, 1)
        key, value, headers = foreign_record(COUNTER, {"conversation_id": conversation.pk})
        # Another service's row with the same id in a database it also calls "default".
        headers += [("outbox_id", str(ours.pk).encode()), ("outbox_db", b"default")]
        send_raw(kafka_bootstrap, kafka_topic, [(key, value, headers)])

        consume(kafka_topic, group)

        assert message_count(conversation) == 1
        assert InboxEntry.objects.count() == 1
        ours.refresh_from_db()
        assert ours.status == Status.PENDING  # untouched: it is not the event consumed


def test_crash_after_handler_commit_before_offset_commit(
    kafka_bootstrap, kafka_topic, group, conversation, monkeypatch
):
    """The handler's transaction committed, the offset commit never happened."""
    with registered(COUNTER, count_handler):
        rows = publish_counted(conversation, 5)
        send_rows(kafka_bootstrap, kafka_topic, rows)
        inbox = [foreign_record(COUNTER, {"conversation_id": conversation.pk}) for _ in range(2)]
        send_raw(kafka_bootstrap, kafka_topic, inbox)

        from django_outbox import kafka as outbox_kafka

        real_commit = outbox_kafka.commit_offsets
        monkeypatch.setattr(outbox_kafka, "commit_offsets", lambda client, offsets: None)
        first = consume(kafka_topic, group)
        assert first.stats.outcomes == {"handled": 7}
        assert set(committed_offsets(kafka_topic, group).values()) == {None}

        monkeypatch.setattr(outbox_kafka, "commit_offsets", real_commit)
        second = consume(kafka_topic, group)
        assert second.stats.outcomes == {"duplicate": 7}
        assert message_count(conversation) == 7


def test_failing_handler_retries_then_dead_while_others_flow(
    kafka_bootstrap, kafka_topic, group, conversation
):
    with registered(COUNTER, count_handler), registered(BROKEN, broken_handler):
        broken = publish_event(BROKEN, {"x": 1}, key="same-key", max_retry=2)
        good = publish_counted(conversation, 2, key="same-key")  # same partition, after it
        send_rows(kafka_bootstrap, kafka_topic, [broken, *good])

        consumer = consume(kafka_topic, group)
        assert consumer.stats.outcomes == {"retry": 1, "handled": 2}
        assert message_count(conversation) == 2
        broken.refresh_from_db()
        assert broken.status == Status.PENDING
        assert broken.retry_count == 1
        assert broken.next_retry_at is not None and broken.next_retry_at > broken.updated_at
        assert "broken handler refuses" in broken.last_error
        assert OutboxMessage.objects.due(broken.next_retry_at).filter(pk=broken.pk).exists()

        # The relay sends the row again once due; the second failure is the last one.
        wait_until_due(broken)
        call_command("outbox_relay", "--burst", verbosity=0)
        consumer = consume(kafka_topic, group)
        assert consumer.stats.outcomes == {"dead": 1}
        broken.refresh_from_db()
        assert broken.status == Status.DEAD
        assert broken.retry_count == 2
        assert "RuntimeError" in broken.last_error

        # A stale copy of a dead row does not bring it back.
        send_rows(kafka_bootstrap, kafka_topic, [broken])
        consumer = consume(kafka_topic, group)
        assert consumer.stats.outcomes == {"skipped": 1}
        broken.refresh_from_db()
        assert broken.status == Status.DEAD and broken.retry_count == 2


def test_failing_inbox_handler_is_retried_in_place_then_rejected(
    kafka_bootstrap, kafka_topic, group, conversation
):
    calls = []

    def flaky(event):
        calls.append(event.event_id)
        if event.data.get("fail") == "always" or len(calls) == 1:
            raise ValueError("not today")
        count_handler(event)

    with registered(COUNTER, flaky):
        records = [
            foreign_record(COUNTER, {"conversation_id": conversation.pk}),  # fails once
            foreign_record(COUNTER, {"conversation_id": conversation.pk, "fail": "always"}),
            foreign_record(COUNTER, {"conversation_id": conversation.pk}),
        ]
        send_raw(kafka_bootstrap, kafka_topic, records)
        consumer = consume(kafka_topic, group, inbox_attempts=3, inbox_retry_max_delay=0.05)

    assert consumer.stats.outcomes == {"handled": 2, "failed": 1}
    assert len(calls) == 2 + 3 + 1
    assert message_count(conversation) == 2
    assert InboxEntry.objects.count() == 2
    rejected = RejectedRecord.objects.get()
    assert rejected.reason == "handler_failed"
    assert rejected.attempts == 3
    assert "ValueError: not today" in rejected.error
    assert rejected.raw_value == records[1][1]
    assert committed_offsets(kafka_topic, group)[0] == 3


def test_malformed_unknown_and_headerless_records_are_recorded_and_skipped(
    kafka_bootstrap, kafka_topic, group, conversation, caplog
):
    caplog.set_level(logging.WARNING, logger="django_outbox")
    with registered(COUNTER, count_handler):
        unknown = foreign_record("nobody.handles.this", {"a": 1})
        good = foreign_record(COUNTER, {"conversation_id": conversation.pk})
        send_raw(
            kafka_bootstrap,
            kafka_topic,
            [
                (b"k", b"\xff\xfe not JSON", [("event_id", b"x"), ("event_type", b"y")]),
                (b"k", b'{"event_id": 1}', [("event_id", b"x"), ("event_type", b"y")]),
                unknown,
                (b"k", b"no headers, no envelope", []),
                (b"k", good[1], []),  # a valid envelope without headers: handled (issue 9)
                good,  # the same event with headers: a repeat
            ],
        )
        consumer = consume(kafka_topic, group)

    assert consumer.stats.outcomes == {"rejected": 3, "skipped": 1, "handled": 1, "duplicate": 1}
    assert message_count(conversation) == 1
    rejected = {r.offset: r for r in RejectedRecord.objects.filter(consumer_group=group)}
    assert {o: r.reason for o, r in rejected.items()} == {
        0: "malformed",
        1: "malformed",
        2: "unknown_event_type",
        3: "missing_headers",
    }
    assert rejected[0].encoding == "base64"
    assert rejected[0].raw_value == b"\xff\xfe not JSON"
    assert rejected[0].headers == [
        {"name": "event_id", "value": "x"},
        {"name": "event_type", "value": "y"},
    ]
    assert rejected[2].event_type == "nobody.handles.this"
    assert rejected[2].raw_value == unknown[1]
    assert all(r.topic == kafka_topic and r.partition == 0 for r in rejected.values())
    logged = [r.getMessage() for r in caplog.records if "rejected record" in r.getMessage()]
    assert f"rejected record {kafka_topic}[0]@0 (malformed)" in logged[0]
    assert len(logged) == 4
    assert committed_offsets(kafka_topic, group)[0] == 6

    # Delivered again (say after an offset reset): one entry per offset, not two.
    consume(kafka_topic, unique_group())
    assert RejectedRecord.objects.filter(consumer_group=group).count() == 4


@pytest.mark.parametrize(
    ("policy", "status", "delayed"),
    [
        ("skip", Status.PENDING, False),
        ("retry", Status.PENDING, True),
        ("dead", Status.DEAD, False),
    ],
)
def test_unknown_event_type_policy_spares_the_retry_budget(
    settings, kafka_bootstrap, kafka_topic, group, policy, status, delayed
):
    settings.OUTBOX_UNKNOWN_EVENT_POLICY = policy
    settings.OUTBOX_RETRY_BACKOFF_MAX = 3600
    row = publish_event("handler.not.deployed.yet", {"a": 1})
    before = timezone.now()
    send_rows(kafka_bootstrap, kafka_topic, [row])

    consumer = consume(kafka_topic, group)

    assert consumer.stats.outcomes == {"skipped": 1}
    row.refresh_from_db()
    assert row.status == status
    assert row.retry_count == 0
    assert (row.next_retry_at is not None and row.next_retry_at > before) == delayed
    assert RejectedRecord.objects.get().reason == "unknown_event_type"


def test_database_errors_retry_the_same_record(
    kafka_bootstrap, kafka_topic, group, conversation, monkeypatch
):
    failures = []

    def unreliable(event):
        if len(failures) < 3:
            failures.append(event.event_id)
            connection.close()  # as if the server went away mid-transaction
            raise OperationalError("server closed the connection unexpectedly")
        count_handler(event)

    answers = iter([True, False, True])
    monkeypatch.setattr(Retrying, "database_answers", lambda self, delivery: next(answers, True))
    with registered(COUNTER, unreliable):
        (row,) = publish_counted(conversation, 1)
        send_rows(kafka_bootstrap, kafka_topic, [row])
        consumer = consume(kafka_topic, group)

    assert consumer.stats.outcomes == {"handled": 1}
    assert len(failures) == 3
    row.refresh_from_db()
    assert row.status == Status.CONSUMED and row.retry_count == 0
    assert message_count(conversation) == 1


def test_handler_raising_database_errors_while_the_database_answers_counts_as_failure(
    kafka_bootstrap, kafka_topic, group, conversation
):
    def always(event):
        raise OperationalError("deadlock found when trying to get lock")

    with registered(COUNTER, always):
        (row,) = publish_counted(conversation, 1)
        send_rows(kafka_bootstrap, kafka_topic, [row])
        consumer = consume(kafka_topic, group)

    assert consumer.stats.outcomes == {"retry": 1}
    row.refresh_from_db()
    assert row.retry_count == 1 and "deadlock" in row.last_error


def test_stop_while_the_database_is_down_commits_nothing_for_that_record(
    kafka_bootstrap, kafka_topic, group, conversation, monkeypatch
):
    def down(event):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(Retrying, "database_answers", lambda self, delivery: False)
    with registered(COUNTER, down):
        rows = publish_counted(conversation, 2, key="one-partition")
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=1)
        consumer = Consumer(
            [kafka_topic],
            group=group,
            burst=True,
            poll_timeout=0.2,
            database_retry_delay=0.05,
            consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
        )
        timer = threading.Timer(3.0, consumer.stop)
        timer.start()
        try:
            consumer.run()
        finally:
            timer.cancel()

    assert consumer.stats.records == 0
    assert committed_offsets(kafka_topic, group)[1] is None
    assert OutboxMessage.objects.pending().count() == 2
    assert all(r.retry_count == 0 for r in OutboxMessage.objects.all())


def test_max_messages(kafka_bootstrap, kafka_topic, group, conversation):
    with registered(COUNTER, count_handler):
        rows = publish_counted(conversation, 5)
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=2)
        first = consume(kafka_topic, group, burst=False, max_messages=2)
        assert first.stats.records == 2
        assert committed_offsets(kafka_topic, group)[2] == 2
        rest = consume(kafka_topic, group)
        assert rest.stats.outcomes == {"handled": 3}
    assert message_count(conversation) == 5


def test_burst_on_an_empty_topic_returns(kafka_topic, group):
    consumer = consume(kafka_topic, group)
    assert consumer.stats.records == 0


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_other_database_rows_are_handled_in_their_own_database(
    settings, kafka_bootstrap, kafka_topic, group
):
    settings.OUTBOX_DATABASES = ["default", "other"]
    seen = []
    with registered(COUNTER, lambda event: seen.append(event.event_id)):
        row = publish_event(COUNTER, {"conversation_id": 0}, using="other")
        send_rows(kafka_bootstrap, kafka_topic, [row], alias="other")
        consume(kafka_topic, group)
        send_rows(kafka_bootstrap, kafka_topic, [row], alias="other")
        again = consume(kafka_topic, group)
    assert len(seen) == 1
    assert again.stats.outcomes == {"duplicate": 1}
    assert OutboxMessage.objects.using("other").get(pk=row.pk).status == Status.CONSUMED
    assert InboxEntry.objects.count() == 0
