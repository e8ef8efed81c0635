"""``Handling`` on its own (no broker): once-only rules and the bookkeeping of outcomes."""

from __future__ import annotations

import datetime

import pytest
from django.db import IntegrityError
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.consumer import Consumer, Delivery, Handling, Outcome, subscribed_topics
from django_outbox.exceptions import ImproperlyConfiguredOutbox
from django_outbox.fields import truncate_to_millis
from django_outbox.kafka import record_headers
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from testproject.chat.models import Conversation

from .consumer_support import COUNTER, count_handler, foreign_record, registered

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_fast_path(settings):
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_CONSUMER_GROUP = "g"  # Handling("g") owns the outbox rows


def delivery_of(row: OutboxMessage, offset: int = 0, alias: str = "default") -> Delivery:
    return Delivery(
        topic="t",
        partition=0,
        offset=offset,
        key=row.message_key.encode(),
        value=row.payload.encode(),
        headers=tuple(record_headers(row, alias)),
    )


def test_local_row_handled_once_then_duplicate():
    conversation = Conversation.objects.create(title="c")
    row = publish_event(COUNTER, {"conversation_id": conversation.pk})
    handling = Handling("g")
    with registered(COUNTER, count_handler):
        assert handling.handle(delivery_of(row)).outcome is Outcome.HANDLED
        assert handling.handle(delivery_of(row, offset=1)).outcome is Outcome.DUPLICATE
    conversation.refresh_from_db()
    assert conversation.message_count == 1
    row.refresh_from_db()
    assert row.status == Status.CONSUMED and row.published_at == row.consumed_at


def test_a_published_row_is_handled_and_keeps_its_published_at():
    row = publish_event(COUNTER, {"conversation_id": 0})
    published_at = timezone.now() - datetime.timedelta(seconds=5)
    OutboxMessage.objects.filter(pk=row.pk).update(
        status=Status.PUBLISHED, published_at=published_at
    )
    row.refresh_from_db()
    with registered(COUNTER, lambda event: None):
        assert Handling("g").handle(delivery_of(row)).outcome is Outcome.HANDLED
    row.refresh_from_db()
    assert row.status == Status.CONSUMED
    assert row.published_at == truncate_to_millis(published_at)
    assert row.consumed_at > row.published_at


def test_dead_rows_are_not_resurrected():
    row = publish_event(COUNTER, {"conversation_id": 0})
    OutboxMessage.objects.filter(pk=row.pk).update(status=Status.DEAD)
    calls = []
    with registered(COUNTER, calls.append):
        result = Handling("g").handle(delivery_of(row))
    assert result.outcome is Outcome.SKIPPED and calls == []
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.DEAD


def test_a_local_row_whose_payload_is_malformed_becomes_dead():
    row = OutboxMessage.objects.create(
        event_type=COUNTER, topic="t", message_key="k", payload="{not json"
    )
    result = Handling("g").handle(delivery_of(row))
    assert result.outcome is Outcome.REJECTED
    row.refresh_from_db()
    assert row.status == Status.DEAD and "rejected it" in row.last_error
    assert RejectedRecord.objects.get().reason == "malformed"  # an event_type header: an event


def test_a_handler_that_swallows_a_database_error_fails():
    def sloppy(event):
        try:
            Conversation.objects.create(title=None)
        except IntegrityError:
            pass

    row = publish_event(COUNTER, {"conversation_id": 0}, max_retry=5)
    with registered(COUNTER, sloppy):
        result = Handling("g").handle(delivery_of(row))
    assert result.outcome is Outcome.RETRY
    row.refresh_from_db()
    assert row.status == Status.PENDING and row.retry_count == 1
    assert "swallowed a database error" in row.last_error or "aborted" in row.last_error


def test_max_retry_zero_is_dead_at_the_first_failure():
    row = publish_event(COUNTER, {"conversation_id": 0}, max_retry=0)

    def fail(event):
        raise KeyError("missing")

    with registered(COUNTER, fail):
        assert Handling("g").handle(delivery_of(row)).outcome is Outcome.DEAD
    row.refresh_from_db()
    assert row.status == Status.DEAD and row.retry_count == 1 and row.next_retry_at is None


def test_inbox_event_once_per_group():
    conversation = Conversation.objects.create(title="c")
    key, value, headers = foreign_record(COUNTER, {"conversation_id": conversation.pk})
    delivery = Delivery("t", 0, 0, key, value, tuple(headers))
    with registered(COUNTER, count_handler):
        assert Handling("a").handle(delivery).outcome is Outcome.HANDLED
        assert Handling("a").handle(delivery).outcome is Outcome.DUPLICATE
        assert Handling("b").handle(delivery).outcome is Outcome.HANDLED
    conversation.refresh_from_db()
    assert conversation.message_count == 2
    assert InboxEntry.objects.count() == 2


def test_a_failed_inbox_handler_leaves_no_inbox_entry():
    key, value, headers = foreign_record(COUNTER, {})
    delivery = Delivery("t", 0, 7, key, value, tuple(headers))

    def fail(event):
        raise ValueError("nope")

    with registered(COUNTER, fail):
        result = Handling("g").handle(delivery)
        assert result.outcome is Outcome.RETRY_IN_PLACE
        assert InboxEntry.objects.count() == 0
        assert Handling("g").give_up(delivery, result.error, 3).outcome is Outcome.FAILED
    rejected = RejectedRecord.objects.get()
    assert (rejected.reason, rejected.attempts, rejected.offset) == ("handler_failed", 3, 7)


def test_headers_that_disagree_with_the_envelope_are_rejected():
    key, value, headers = foreign_record(COUNTER, {})
    headers[1] = ("event_type", b"something.else")
    result = Handling("g").handle(Delivery("t", 0, 0, key, value, tuple(headers)))
    assert result.outcome is Outcome.REJECTED and "disagree" in result.error


def test_a_tombstone_is_rejected():
    result = Handling("g").handle(
        Delivery("t", 0, 0, b"k", None, (("event_id", b"x"), ("event_type", b"y")))
    )
    assert result.outcome is Outcome.REJECTED
    assert RejectedRecord.objects.get().value is None


def test_topics_default_to_those_of_the_registered_handlers(settings):
    settings.OUTBOX_DEFAULT_TOPIC = None
    settings.OUTBOX_TOPICS = {"chat.message.created": "chat-a", COUNTER: "counters"}
    with registered(COUNTER, count_handler):
        assert subscribed_topics() == ["chat-a", "counters"]
    settings.OUTBOX_TOPICS = {}
    with pytest.raises(ImproperlyConfiguredOutbox, match="--topic"):
        Consumer()


def test_consumer_arguments_are_checked():
    with pytest.raises(ValueError, match="max_messages"):
        Consumer(["t"], max_messages=0)
    with pytest.raises(ValueError, match="inbox_attempts"):
        Consumer(["t"], inbox_attempts=0)
    with pytest.raises(ValueError, match="batch_size"):
        Consumer(["t"], batch_size=0)


def test_a_second_group_runs_its_handler_once_through_the_inbox_and_leaves_the_row():
    conversation = Conversation.objects.create(title="two groups")
    row = publish_event(COUNTER, {"conversation_id": conversation.pk}, max_retry=5)
    with registered(COUNTER, count_handler):
        assert Handling("g").handle(delivery_of(row)).outcome is Outcome.HANDLED
        assert Handling("other").handle(delivery_of(row, 1)).outcome is Outcome.HANDLED
        assert Handling("other").handle(delivery_of(row, 2)).outcome is Outcome.DUPLICATE
        assert Handling("g").handle(delivery_of(row, 3)).outcome is Outcome.DUPLICATE
    conversation.refresh_from_db()
    assert conversation.message_count == 2  # once per group
    assert list(InboxEntry.objects.values_list("consumer_group", flat=True)) == ["other"]

    def fail(event):
        raise RuntimeError("the second service is broken")

    with registered(COUNTER, fail):
        assert Handling("third").handle(delivery_of(row, 4)).outcome is Outcome.RETRY_IN_PLACE
    row.refresh_from_db()
    assert (row.status, row.retry_count) == (Status.CONSUMED, 0)  # the owner's outcome stays
