"""Chunks: ``Handling.handle_batch`` on its own, and the consumer's batching against the broker."""

from __future__ import annotations

import collections

import pytest
from django.db import OperationalError

from django_outbox import publish_event
from django_outbox.consumer import Delivery, Handling
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry
from testproject.chat.models import Conversation

from .consumer_support import (
    COUNTER,
    committed_offsets,
    consume,
    count_handler,
    foreign_record,
    handling_settings,
    local,
    registered,
    send_rows,
    unique_group,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_fast_path(settings):
    handling_settings(settings)


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="batch tests")


def foreign(data: dict, offset: int, partition: int = 0) -> Delivery:
    key, value, headers = foreign_record(COUNTER, data)
    return Delivery("t", partition, offset, key, value, tuple(headers))


def count(conversation) -> int:
    conversation.refresh_from_db()
    return conversation.message_count


def counting_unless_fail(calls: list):
    """Counts, then raises when the event says so: its increment must be rolled back."""

    def handler(event):
        calls.append(event.event_id)
        count_handler(event)
        if event.data.get("fail"):
            raise RuntimeError("refused after writing")

    return handler


def outcomes(results) -> list[str | None]:
    return [None if r is None else r.outcome.value for r in results]


def test_one_failing_handler_in_a_chunk_rolls_back_only_its_own_effects(conversation):
    rows = [
        publish_event(COUNTER, {"conversation_id": conversation.pk, "fail": n == 2}, max_retry=3)
        for n in range(5)
    ]
    calls: list = []
    with registered(COUNTER, counting_unless_fail(calls)):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])

    assert outcomes(results) == ["handled", "handled", "retry", "handled", "handled"]
    # One pass: each handler once, the failing one rolled back alone.
    ids = [row.event.event_id for row in rows]
    assert calls == ids
    assert count(conversation) == 4  # the failing one's increment is gone
    statuses = {r.pk: (r.status, r.retry_count) for r in OutboxMessage.objects.all()}
    assert [statuses[row.pk] for row in rows] == [(Status.CONSUMED, 0)] * 2 + [
        (Status.PENDING, 1)
    ] + [(Status.CONSUMED, 0)] * 2
    failed = OutboxMessage.objects.get(pk=rows[2].pk)
    assert "refused after writing" in failed.last_error and failed.next_retry_at is not None
    assert all(r.consumed_at is not None for r in OutboxMessage.objects.consumed())


def test_a_failing_inbox_handler_holds_back_its_partition_only(conversation):
    data = {"conversation_id": conversation.pk}
    deliveries = [
        foreign(data, 0, partition=0),
        foreign({**data, "fail": True}, 1, partition=0),
        foreign(data, 2, partition=0),  # after the failure, same partition: waits
        foreign(data, 0, partition=1),  # another partition: goes on
    ]
    with registered(COUNTER, counting_unless_fail([])):
        results = Handling("g").handle_batch(deliveries)

    assert outcomes(results) == ["handled", "retry_in_place", None, "handled"]
    assert count(conversation) == 2
    assert InboxEntry.objects.count() == 2  # none for the failed event


def test_the_same_event_twice_in_one_chunk_runs_once(conversation):
    (row,) = [publish_event(COUNTER, {"conversation_id": conversation.pk})]
    event = foreign({"conversation_id": conversation.pk}, 2)
    again = Delivery("t", 1, 0, event.key, event.value, event.headers)  # another partition too
    with registered(COUNTER, count_handler):
        results = Handling("g").handle_batch(
            [local(row, 0), local(row, 1), event, local(row, 3), again]
        )
    assert outcomes(results) == ["handled", "duplicate", "handled", "duplicate", "duplicate"]
    assert count(conversation) == 2
    assert InboxEntry.objects.count() == 1
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.CONSUMED


def test_a_failure_before_the_commit_leaves_nothing_then_the_retry_does_it_once(
    conversation, monkeypatch
):
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(3)]
    inbox = foreign({"conversation_id": conversation.pk}, 3)
    deliveries = [*(local(row, n) for n, row in enumerate(rows)), inbox]
    handling = Handling("g")

    def crash(alias, pks):
        raise OperationalError("server closed the connection unexpectedly")

    with registered(COUNTER, count_handler):
        monkeypatch.setattr(handling.rows, "mark_consumed", crash)
        with pytest.raises(OperationalError):
            handling.handle_batch(deliveries)
        # All handlers ran; none of their effects, nor any mark, nor the inbox entry stayed.
        assert count(conversation) == 0
        assert OutboxMessage.objects.consumed().count() == 0
        assert InboxEntry.objects.count() == 0

        monkeypatch.undo()
        assert outcomes(handling.handle_batch(deliveries)) == ["handled"] * 4
        assert outcomes(handling.handle_batch(deliveries)) == ["duplicate"] * 4
    assert count(conversation) == 4


def test_a_handler_database_error_its_savepoint_undoes_is_retried_once_then_fails_alone(
    conversation,
):
    rows = [
        publish_event(COUNTER, {"conversation_id": conversation.pk}, max_retry=3) for _ in range(3)
    ]
    calls: list = []

    def second_fails(event):
        calls.append(event.event_id)
        count_handler(event)
        if event.event_id == rows[1].event.event_id:
            raise OperationalError("deadlock detected")

    with registered(COUNTER, second_fails):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["handled", "retry", "handled"]
    ids = [row.event.event_id for row in rows]
    assert calls == [ids[0], ids[1], ids[1], ids[2]]  # the failing one at once again
    assert count(conversation) == 2
    assert OutboxMessage.objects.get(pk=rows[1].pk).retry_count == 1


def test_a_handler_database_error_that_lost_the_transaction_rolls_back_the_chunk(
    conversation,
):
    from django.db import connection

    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(2)]

    def second_loses_the_connection(event):
        count_handler(event)
        if event.event_id == rows[1].event.event_id:
            connection.close()  # the server went away: the transaction with it
            raise OperationalError("server closed the connection unexpectedly")

    with registered(COUNTER, second_loses_the_connection), pytest.raises(OperationalError):
        Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert count(conversation) == 0
    assert OutboxMessage.objects.consumed().count() == 0


def test_stop_ends_the_chunk_after_the_record_in_hand(conversation):
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(4)]
    calls: list = []
    with registered(COUNTER, counting_unless_fail(calls)):
        results = Handling("g").handle_batch(
            [local(row, n) for n, row in enumerate(rows)], stop=lambda: len(calls) >= 2
        )
    assert outcomes(results) == ["handled", "handled", None, None]
    assert count(conversation) == 2
    assert OutboxMessage.objects.consumed().count() == 2


def test_a_handler_that_swallows_a_database_error_fails_alone(conversation):
    from django.db import IntegrityError

    def sloppy(event):
        count_handler(event)
        if event.data.get("fail"):
            try:
                Conversation.objects.create(title=None)
            except IntegrityError:
                pass

    rows = [
        publish_event(COUNTER, {"conversation_id": conversation.pk, "fail": n == 0})
        for n in range(2)
    ]
    with registered(COUNTER, sloppy):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["retry", "handled"]
    assert count(conversation) == 1


# ---------------------------------------------------------------------------- with the broker


@pytest.fixture
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_TOPICS = {}
    return settings


@pytest.mark.kafka
@pytest.mark.parametrize("batch_size", [1, 3, 200])
def test_consumer_chunks_with_failures_and_repeats(
    outbox_config, kafka_bootstrap, kafka_topic, conversation, batch_size
):
    rows = [
        publish_event(
            COUNTER, {"conversation_id": conversation.pk, "fail": n == 4}, key="k", max_retry=5
        )
        for n in range(8)
    ]
    calls: list = []
    group = unique_group()
    with registered(COUNTER, counting_unless_fail(calls)):
        send_rows(kafka_bootstrap, kafka_topic, rows + rows[:3], partition=0)
        consumer = consume(kafka_topic, group, batch_size=batch_size)

    assert consumer.stats.outcomes == {"handled": 7, "retry": 1, "duplicate": 3}
    # Each ran once, the failing one too: its failure counts once. The repeats are
    # duplicates, not run.
    runs = collections.Counter(calls)
    assert set(runs) == {row.event.event_id for row in rows}
    assert set(runs.values()) == {1}
    assert count(conversation) == 7
    assert OutboxMessage.objects.consumed().count() == 7
    assert OutboxMessage.objects.get(pk=rows[4].pk).retry_count == 1
    assert committed_offsets(kafka_topic, group)[0] == 11


@pytest.mark.kafka
def test_a_chunk_that_fails_as_a_whole_is_handled_record_by_record(
    outbox_config, kafka_bootstrap, kafka_topic, conversation, monkeypatch
):
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(4)]
    real = Handling.handle_batch

    def broken_commit(self, deliveries, **kwargs):
        results = real(self, deliveries, **kwargs)  # handled and committed ...
        if len(deliveries) > 1:  # (``handle``, one by one, is a chunk of one)
            raise RuntimeError("deferred constraint violated at commit")  # ... or so it seems
        return results

    monkeypatch.setattr(Handling, "handle_batch", broken_commit)
    with registered(COUNTER, count_handler):
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
        consumer = consume(kafka_topic, unique_group())
    assert consumer.stats.outcomes == {"duplicate": 4}
    assert count(conversation) == 4


@pytest.mark.kafka
def test_a_handler_raising_database_errors_in_a_chunk_fails_alone(
    outbox_config, kafka_bootstrap, kafka_topic, conversation
):
    rows = [
        publish_event(COUNTER, {"conversation_id": conversation.pk, "fail": n == 1})
        for n in range(3)
    ]

    def deadlocked(event):
        count_handler(event)
        if event.data["fail"]:
            raise OperationalError("deadlock detected")

    with registered(COUNTER, deadlocked):
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
        consumer = consume(kafka_topic, unique_group())
    assert consumer.stats.outcomes == {"handled": 2, "retry": 1}
    assert count(conversation) == 2


def test_the_command_checks_the_batch_size():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--batch-size: must be at least 1"):
        call_command("outbox_consume", "--batch-size", "0", "--topic", "t")
