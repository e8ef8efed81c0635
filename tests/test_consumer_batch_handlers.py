"""Batch handlers (``@handler(..., batch=True)``): one list per chunk, once-only, failures alone."""

from __future__ import annotations

import uuid

import pytest
from django.db import transaction
from django.utils.dateparse import parse_datetime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_outbox import publish_event
from django_outbox.consumer import Delivery, Handling
from django_outbox.consumer.records import parse
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from testproject.chat.models import ChatHistory, Conversation

from .consumer_support import (
    COUNTER,
    committed_offsets,
    consume,
    foreign_record,
    handling_settings,
    local,
    registered,
    send_raw,
    send_rows,
    unique_group,
)

pytestmark = pytest.mark.django_db(transaction=True)

OTHER = "test.other"


@pytest.fixture(autouse=True)
def outbox_config(settings):
    handling_settings(settings)
    settings.OUTBOX_TOPICS = {}


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="batch handler tests")


def foreign(event_type: str, data: dict, offset: int, partition: int = 0) -> Delivery:
    key, value, headers = foreign_record(event_type, data)
    return Delivery("t", partition, offset, key, value, tuple(headers))


def outcomes(results) -> list[str | None]:
    return [None if r is None else r.outcome.value for r in results]


def message(conversation, n: int, **extra) -> dict:
    return {
        "conversation_id": conversation.pk,
        "author": "batch",
        "text": f"message {n}",
        "sent_at": "2026-12-01T00:00:00Z",
        **extra,
    }


class Histories:
    """A batch handler that ``bulk_create``\\ s one ``ChatHistory`` per event; poison raises."""

    def __init__(self) -> None:
        self.calls: list[list[uuid.UUID]] = []

    def __call__(self, events) -> None:
        self.calls.append([event.event_id for event in events])
        ChatHistory.objects.bulk_create(
            ChatHistory(
                event_id=event.event_id,
                conversation_id=event.data["conversation_id"],
                author=event.data["author"],
                text=event.data["text"],
                sent_at=parse_datetime(event.data["sent_at"]),
            )
            for event in events
        )
        if any(event.data.get("poison") for event in events):
            raise RuntimeError("poison in the batch")


def histories() -> set[uuid.UUID]:
    return set(ChatHistory.objects.values_list("event_id", flat=True))


# ---------------------------------------------------------------------------- Handling


def test_a_batch_handler_gets_the_chunks_events_as_one_list(conversation):
    rows = [publish_event(COUNTER, message(conversation, n)) for n in range(5)]
    handler = Histories()
    with registered(COUNTER, handler, batch=True):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["handled"] * 5
    assert handler.calls == [[row.event.event_id for row in rows]]  # in chunk order
    assert histories() == {row.event.event_id for row in rows}
    assert OutboxMessage.objects.consumed().count() == 5


def test_one_failing_event_is_retried_alone_and_the_rest_commit(conversation):
    rows = [
        publish_event(COUNTER, message(conversation, n, poison=n == 2), max_retry=3)
        for n in range(5)
    ]
    ids = [row.event.event_id for row in rows]
    handler = Histories()
    with registered(COUNTER, handler, batch=True):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])

    assert outcomes(results) == ["handled", "handled", "retry", "handled", "handled"]
    # The list (rolled back to its savepoint), then one at a time: each event of a
    # failing list reaches the handler twice, once in the list.
    assert handler.calls == [ids, *([i] for i in ids)]
    assert histories() == set(ids) - {ids[2]}
    failed = OutboxMessage.objects.get(pk=rows[2].pk)
    assert (failed.status, failed.retry_count) == (Status.PENDING, 1)
    assert "poison in the batch" in failed.last_error and failed.next_retry_at is not None
    assert OutboxMessage.objects.consumed().count() == 4


def test_a_partition_keeps_its_order_between_batch_and_per_event_handlers(conversation):
    order: list[object] = []

    def batch(events):
        order.append([event.data["n"] for event in events])

    def single(event):
        order.append(event.data["n"])

    def row(event_type, n):
        return publish_event(event_type, {"n": n})

    records = [
        (row(COUNTER, 1), 0),
        (row(COUNTER, 2), 1),
        (row(OTHER, 3), 0),  # partition 0 had 1 pending in the batch: it goes first
        (row(COUNTER, 4), 1),
        (row(COUNTER, 5), 0),
    ]
    with registered(COUNTER, batch, batch=True), registered(OTHER, single):
        results = Handling("g").handle_batch(
            [local(r, n, partition=p) for n, (r, p) in enumerate(records)]
        )
    assert outcomes(results) == ["handled"] * 5
    assert order == [[1, 2], 3, [4, 5]]


def test_a_failing_inbox_event_of_a_batch_holds_back_the_rest_of_its_partition(conversation):
    deliveries = [
        foreign(COUNTER, message(conversation, 0), 0, partition=0),
        foreign(COUNTER, message(conversation, 1, poison=True), 1, partition=0),
        foreign(COUNTER, message(conversation, 2), 2, partition=0),  # after it: waits
        foreign(COUNTER, message(conversation, 3), 0, partition=1),  # another partition
    ]
    with registered(COUNTER, Histories(), batch=True):
        results = Handling("g").handle_batch(deliveries)
    assert outcomes(results) == ["handled", "retry_in_place", None, "handled"]
    assert ChatHistory.objects.count() == 2
    assert InboxEntry.objects.count() == 2  # none for the failed one, none for the waiting one


def test_an_inbox_entry_inserted_meanwhile_makes_a_duplicate(conversation, monkeypatch):
    """Another consumer handled the event between our look-up and our insert."""
    deliveries = [foreign(COUNTER, message(conversation, n), n) for n in range(3)]
    handling = Handling("g")
    with registered(COUNTER, Histories(), batch=True):
        assert outcomes(handling.handle_batch(deliveries[:1])) == ["handled"]
        ChatHistory.objects.all().delete()
        real, looks = handling.inbox.handled, []

        def blind_once(event_ids):
            looks.append(event_ids)
            return set() if len(looks) == 1 else real(event_ids)

        monkeypatch.setattr(handling.inbox, "handled", blind_once)
        results = handling.handle_batch(deliveries)
    # The INSERT of the entries finds the first one there: the chunk is walked again.
    assert len(looks) == 2
    assert outcomes(results) == ["duplicate", "handled", "handled"]
    assert ChatHistory.objects.count() == 2  # the duplicate's effects rolled back
    assert InboxEntry.objects.count() == 3


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_rows_of_each_database_get_a_list_of_their_own(settings, conversation):
    settings.OUTBOX_DATABASES = ["default", "other"]
    here = [publish_event(COUNTER, {"n": n}) for n in range(2)]
    there = [publish_event(COUNTER, {"n": n}, using="other") for n in range(2, 4)]
    calls: list[list[int]] = []
    with registered(
        COUNTER, lambda events: calls.append([e.data["n"] for e in events]), batch=True
    ):
        results = Handling("g").handle_batch(
            [
                local(here[0], 0, partition=0),
                local(there[0], 0, partition=1, alias="other"),
                local(here[1], 1, partition=0),
                local(there[1], 1, partition=1, alias="other"),
            ]
        )
    assert outcomes(results) == ["handled"] * 4
    assert sorted(calls) == [[0, 1], [2, 3]]
    assert OutboxMessage.objects.consumed().count() == 2
    assert OutboxMessage.objects.using("other").consumed().count() == 2


def test_stop_leaves_a_batch_not_handed_over_for_later(conversation):
    rows = [publish_event(COUNTER, message(conversation, n)) for n in range(3)]
    handler = Histories()
    seen = []

    def stop():
        seen.append(1)
        return len(seen) > 2

    with registered(COUNTER, handler, batch=True):
        results = Handling("g").handle_batch(
            [local(row, n) for n, row in enumerate(rows)], stop=stop
        )
    assert outcomes(results) == [None, None, None]
    assert handler.calls == [] and ChatHistory.objects.count() == 0
    assert OutboxMessage.objects.consumed().count() == 0


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=st.lists(
        st.tuples(st.booleans(), st.sampled_from(["local", "inbox"]), st.integers(0, 2)),
        min_size=1,
        max_size=12,
    )
)
def test_exactly_the_events_that_do_not_fail_commit(conversation, plan):
    """Random failure sets: each non-failing event's effect once, no failing one's."""
    deliveries, rows, failing = [], {}, set()
    offsets = [0, 0, 0]
    for poison, kind, partition in plan:
        data = message(conversation, len(deliveries), poison=poison)
        if kind == "local":
            row = publish_event(COUNTER, data, max_retry=5)
            delivery = local(row, offsets[partition], partition)
            rows[row.event.event_id] = row
        else:
            delivery = foreign(COUNTER, data, offsets[partition], partition)
        offsets[partition] += 1
        deliveries.append(delivery)
        if poison:
            failing.add(delivery)
    before = histories()
    with registered(COUNTER, Histories(), batch=True):
        results = Handling("g").handle_batch(deliveries)

    handled = {
        d for d, r in zip(deliveries, results, strict=True) if r and r.outcome.value == "handled"
    }
    assert not handled & failing
    # Nothing succeeds that fails, nothing is left but after a failing inbox event.
    blocked = set()
    for delivery, result in zip(deliveries, results, strict=True):
        partition = delivery.partition
        if partition in blocked or result is None:
            assert partition in blocked and result is None
        elif delivery in failing:
            assert result.outcome.value in ("retry", "retry_in_place")
            if result.outcome.value == "retry_in_place":
                blocked.add(partition)
        else:
            assert result.outcome.value == "handled"
    effects = histories() - before
    assert effects == {parse(d).event_id for d in handled}
    for delivery, result in zip(deliveries, results, strict=True):
        row = rows.get(parse(delivery).event_id)
        if row is None:
            continue
        row.refresh_from_db()
        if result is None:  # left for later, untouched
            assert (row.status, row.retry_count) == (Status.PENDING, 0)
        elif delivery in failing:
            assert (row.status, row.retry_count) == (Status.PENDING, 1)
        else:
            assert (row.status, row.retry_count) == (Status.CONSUMED, 0)
    inboxed = set(InboxEntry.objects.values_list("event_id", flat=True))
    foreign_handled = {parse(d).event_id for d in handled} - set(rows)
    assert foreign_handled <= inboxed
    assert not {parse(d).event_id for d in failing} & inboxed


# ---------------------------------------------------------------------------- with the broker


@pytest.fixture
def broker_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    return settings


@pytest.mark.kafka
def test_bulk_create_once_only_under_redelivery(
    broker_config, kafka_bootstrap, kafka_topic, conversation
):
    rows = [publish_event(COUNTER, message(conversation, n)) for n in range(50)]
    handler = Histories()
    group = unique_group()
    with registered(COUNTER, handler, batch=True):
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
        first = consume(kafka_topic, group, batch_size=50)
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=1)  # all of them again
        again = consume(kafka_topic, group, batch_size=50)

    assert first.stats.outcomes == {"handled": 50}
    assert again.stats.outcomes == {"duplicate": 50}
    assert sum(len(call) for call in handler.calls) == 50  # the copies reach no handler
    assert histories() == {row.event.event_id for row in rows}
    assert OutboxMessage.objects.consumed().count() == 50
    offsets = committed_offsets(kafka_topic, group)
    assert (offsets[0], offsets[1]) == (50, 50)


@pytest.mark.kafka
def test_one_poison_event_in_a_batch_of_50(
    broker_config, kafka_bootstrap, kafka_topic, conversation
):
    rows = [
        publish_event(COUNTER, message(conversation, n, poison=n == 17), max_retry=3)
        for n in range(50)
    ]
    with registered(COUNTER, Histories(), batch=True):
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
        consumer = consume(kafka_topic, unique_group(), batch_size=50)

    assert consumer.stats.outcomes == {"handled": 49, "retry": 1}
    poison = OutboxMessage.objects.get(pk=rows[17].pk)
    assert (poison.status, poison.retry_count) == (Status.PENDING, 1)
    assert poison.next_retry_at is not None and "poison in the batch" in poison.last_error
    assert OutboxMessage.objects.consumed().count() == 49
    assert histories() == {row.event.event_id for n, row in enumerate(rows) if n != 17}


@pytest.mark.kafka
def test_foreign_events_in_a_batch_once_only_and_a_poison_one_rejected(
    broker_config, kafka_bootstrap, kafka_topic, conversation
):
    records = [foreign_record(COUNTER, message(conversation, n, poison=n == 5)) for n in range(20)]
    group = unique_group()
    with registered(COUNTER, Histories(), batch=True):
        send_raw(kafka_bootstrap, kafka_topic, records)
        first = consume(kafka_topic, group, inbox_attempts=2, inbox_retry_max_delay=0.05)
        send_raw(kafka_bootstrap, kafka_topic, records)
        again = consume(kafka_topic, group, inbox_attempts=2, inbox_retry_max_delay=0.05)

    assert first.stats.outcomes == {"handled": 19, "failed": 1}
    # The copies: 19 handled before, the poison one rejected before and failing again.
    assert again.stats.outcomes == {"duplicate": 19, "failed": 1}
    assert ChatHistory.objects.count() == 19
    assert InboxEntry.objects.filter(consumer_group=group).count() == 19
    rejected = RejectedRecord.objects.filter(consumer_group=group)
    assert {r.reason for r in rejected} == {"handler_failed"}
    assert committed_offsets(kafka_topic, group)[0] == 40


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_other_database_rows_through_a_batch_handler(
    broker_config, settings, kafka_bootstrap, kafka_topic
):
    settings.OUTBOX_DATABASES = ["default", "other"]
    seen: list[uuid.UUID] = []

    def batch(events):
        seen.extend(event.event_id for event in events)

    rows = [publish_event(COUNTER, {"n": n}, using="other") for n in range(10)]
    group = unique_group()
    with registered(COUNTER, batch, batch=True):
        send_rows(kafka_bootstrap, kafka_topic, rows, alias="other", partition=0)
        consume(kafka_topic, group)
        send_rows(kafka_bootstrap, kafka_topic, rows, alias="other", partition=0)
        again = consume(kafka_topic, group)
    assert sorted(seen) == sorted(row.event.event_id for row in rows)
    assert again.stats.outcomes == {"duplicate": 10}
    assert OutboxMessage.objects.using("other").consumed().count() == 10
    assert InboxEntry.objects.count() == 0


def test_effects_and_marks_commit_together(conversation, monkeypatch):
    """A failure at the end of the chunk leaves neither the batch's rows nor any mark."""
    rows = [publish_event(COUNTER, message(conversation, n)) for n in range(3)]
    handling = Handling("g")

    def crash(alias, pks):
        raise transaction.TransactionManagementError("the commit failed")

    with registered(COUNTER, Histories(), batch=True):
        monkeypatch.setattr(handling.rows, "mark_consumed", crash)
        with pytest.raises(transaction.TransactionManagementError):
            handling.handle_batch([local(row, n) for n, row in enumerate(rows)])
        assert ChatHistory.objects.count() == 0
        assert OutboxMessage.objects.consumed().count() == 0
        monkeypatch.undo()
        assert (
            outcomes(handling.handle_batch([local(r, n) for n, r in enumerate(rows)]))
            == ["handled"] * 3
        )
    assert ChatHistory.objects.count() == 3
