"""Each handler runs once per delivery: a neighbour's failure in its chunk never runs it again.

The side effects counted here are outside the database (a Python list): the kind a
rollback cannot undo (an e-mail, an HTTP call). Real databases, all three.
"""

from __future__ import annotations

import collections
import re
import uuid

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings

from django_outbox import Event, publish_event
from django_outbox.consumer import Handling
from django_outbox.consumer import savepoints as lazy
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry
from testproject.chat.models import Conversation

from .consumer_support import (
    consume,
    handling_settings,
    local,
    registered,
    send_rows,
    unique_group,
)
from .once_support import (
    Outside,
    data,
    foreign,
    histories,
    history,
    outcomes,
    planned,
    plans,
    record_savepoints,
)

pytestmark = pytest.mark.django_db(transaction=True)

PLAIN = "test.once.plain"
BATCH = "test.once.batch"
QUIET = "test.once.quiet"


@pytest.fixture(autouse=True)
def outbox_config(settings):
    handling_settings(settings)
    settings.OUTBOX_TOPICS = {}


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="once tests")


def test_a_handler_runs_once_when_a_neighbour_in_its_chunk_fails(conversation):
    rows = [publish_event(PLAIN, data(conversation, n, fail=n == 3), max_retry=3) for n in range(6)]
    outside = Outside()
    with registered(PLAIN, outside.plain):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled"] * 3 + ["retry"] + ["handled"] * 2
    assert outside.sent == ids  # each once, the failing one too
    assert histories() == set(ids) - {ids[3]}  # its write rolled back alone
    assert outside.committed == ids[:3] + ids[4:]  # its on_commit callback dropped
    failed = OutboxMessage.objects.get(pk=rows[3].pk)
    assert (failed.status, failed.retry_count) == (Status.PENDING, 1)  # counted once
    assert OutboxMessage.objects.consumed().count() == 5


def test_inbox_events_run_once_and_the_failing_ones_entry_is_not_kept(conversation):
    deliveries = [
        foreign(PLAIN, data(conversation, n, fail=n == 1), n, partition=n % 2) for n in range(4)
    ]
    outside = Outside()
    with registered(PLAIN, outside.plain):
        results = Handling("g").handle_batch(deliveries)

    # Partition 1 waits behind its failing event (a retry in place); partition 0 goes on.
    assert outcomes(results) == ["handled", "retry_in_place", "handled", None]
    sent = collections.Counter(outside.sent)
    assert len(sent) == 3 and set(sent.values()) == {1}
    handled = {uuid.UUID(d.header("event_id")) for d in deliveries[::2]}
    assert histories() == handled == set(outside.committed)
    assert set(InboxEntry.objects.values_list("event_id", flat=True)) == handled


def test_a_batch_handler_runs_once_when_a_neighbour_fails(conversation):
    plain = [
        publish_event(PLAIN, data(conversation, n, fail=n == 2), max_retry=3) for n in range(3)
    ]
    batch = [publish_event(BATCH, data(conversation, 10 + n)) for n in range(3)]
    outside = Outside()
    # Two partitions: the batch's list waits for nothing of the plain ones.
    deliveries = [local(row, n, partition=0) for n, row in enumerate(plain)] + [
        local(row, n, partition=1) for n, row in enumerate(batch)
    ]
    with registered(PLAIN, outside.plain), registered(BATCH, outside.batch, batch=True):
        results = Handling("g").handle_batch(deliveries)

    assert outcomes(results) == ["handled", "handled", "retry"] + ["handled"] * 3
    assert collections.Counter(outside.sent) == {row.event.event_id: 1 for row in plain + batch}
    kept = {row.event.event_id for row in plain[:2] + batch}
    assert histories() == kept == set(outside.committed)


def test_a_failing_list_is_handled_one_event_at_a_time_each_once_more(conversation):
    rows = [publish_event(BATCH, data(conversation, n, fail=n == 1), max_retry=3) for n in range(3)]
    outside = Outside()
    with registered(BATCH, outside.batch, batch=True):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled", "retry", "handled"]
    assert outside.sent == ids + ids  # the list (rolled back), then each alone: documented
    assert histories() == {ids[0], ids[2]} == set(outside.committed)


@pytest.fixture
def chunk_savepoints(monkeypatch) -> list[lazy.LazySavepoints]:
    """The ``LazySavepoints`` of each chunk handled."""
    return record_savepoints(monkeypatch)


def test_a_handler_without_a_query_costs_no_savepoint(conversation, chunk_savepoints):
    rows = [publish_event(QUIET, data(conversation, n)) for n in range(3)]
    seen: list[uuid.UUID] = []
    with registered(QUIET, lambda event: seen.append(event.event_id)):
        with CaptureQueriesContext(connection) as queries:
            results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["handled"] * 3 and len(seen) == 3
    assert [made.count for made in chunk_savepoints] == [{"default": 0}]
    assert not [q for q in queries.captured_queries if "SAVEPOINT" in q["sql"].upper()]


def test_a_handler_with_queries_gets_one_savepoint_each(conversation, chunk_savepoints):
    rows = [publish_event(PLAIN, data(conversation, n)) for n in range(3)]
    with registered(PLAIN, Outside().plain):
        with CaptureQueriesContext(connection) as queries:
            Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert [made.count for made in chunk_savepoints] == [{"default": 3}]
    if connection.vendor == "postgresql":
        # In the query of the handler's first statement, not a round trip of its own;
        # one name for the chunk, never released.
        joined = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
        names = {re.match(r'SAVEPOINT\s+"?(\w+)', sql).group(1) for sql in joined}
        assert len(joined) == 3 and all("; INSERT" in sql for sql in joined)
        assert names == {chunk_savepoints[0].name}


def test_a_handler_whose_first_query_fails_is_rolled_back_alone(conversation):
    rows = [publish_event(PLAIN, data(conversation, n), max_retry=3) for n in range(3)]
    taken = rows[0].event.event_id

    def second_collides(event: Event) -> None:
        entry = history(event)
        if event.data["n"] == 1:
            entry.event_id = taken  # unique: the INSERT itself fails
        entry.save()

    with registered(PLAIN, second_collides):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["handled", "retry", "handled"]
    assert histories() == {rows[0].event.event_id, rows[2].event.event_id}


def test_a_handler_that_swallows_a_database_error_is_rolled_back_alone(conversation):
    """On PostgreSQL the caught error aborted the transaction: the savepoint saves the
    others. SQLite and MariaDB forgive a failed statement: the handler succeeded."""

    def swallowing(event: Event) -> None:
        history(event).save()
        if event.data["fail"]:
            with connection.cursor() as cursor:
                try:
                    cursor.execute("SELECT * FROM no_such_table_here")
                except DatabaseError:
                    pass  # not through the ORM: Django does not flag the transaction

    rows = [publish_event(PLAIN, data(conversation, n, fail=n == 1), max_retry=3) for n in range(3)]
    with registered(PLAIN, swallowing):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])

    ids = [row.event.event_id for row in rows]
    if connection.vendor == "postgresql":
        assert outcomes(results) == ["handled", "retry", "handled"]
        assert histories() == {ids[0], ids[2]}
        assert "swallowed a database error" in OutboxMessage.objects.get(pk=rows[1].pk).last_error
    else:
        assert outcomes(results) == ["handled"] * 3
        assert histories() == set(ids)


def test_a_postgresql_chunk_ends_at_its_subtransaction_cap(conversation, settings):
    settings.OUTBOX_CONSUMER_SUBTRANSACTIONS = 2
    rows = [publish_event(PLAIN, data(conversation, n)) for n in range(5)]
    outside = Outside()
    with registered(PLAIN, outside.plain):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    if connection.vendor == "postgresql":
        assert outcomes(results) == ["handled", "handled", None, None, None]  # for later
    else:
        assert outcomes(results) == ["handled"] * 5
    assert len(outside.sent) == len(histories()) == outcomes(results).count("handled")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans([PLAIN, BATCH]))
def test_effects_are_exactly_the_passing_handlers_each_once(conversation, plan):
    """Random chunks: a per-event handler runs once per record it gets to (a failing
    batch list's events once more, alone); exactly the passing ones' writes and
    callbacks commit."""
    deliveries, types = planned(conversation, plan)
    before = histories()
    outside = Outside()
    with registered(PLAIN, outside.plain), registered(BATCH, outside.batch, batch=True):
        results = Handling("g").handle_batch(deliveries)

    ids = list(types)
    handled = {ids[i] for i, r in enumerate(results) if r and r.outcome.value == "handled"}
    reached = {ids[i] for i, r in enumerate(results) if r is not None}
    assert handled == {i for i in reached if not types[i][1]}
    assert histories() - before == handled
    assert set(outside.committed) == handled and len(outside.committed) == len(handled)
    sent = collections.Counter(outside.sent)
    for event_id, (event_type, _) in types.items():
        if event_type == PLAIN:
            assert sent[event_id] == (1 if event_id in reached else 0)
        elif event_id in reached:
            assert sent[event_id] in (1, 2)  # a failing list's events once more, alone
        else:
            assert sent[event_id] <= 1  # in a failing list, then left behind its partition
    assert all(sent[event_id] == 1 for event_id in handled if types[event_id][0] == PLAIN)


def test_no_subtransaction_cap_at_zero(conversation, settings):
    settings.OUTBOX_CONSUMER_SUBTRANSACTIONS = 0
    rows = [publish_event(PLAIN, data(conversation, n)) for n in range(5)]
    with registered(PLAIN, Outside().plain):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])
    assert outcomes(results) == ["handled"] * 5


@pytest.mark.kafka
def test_after_a_capped_chunk_the_next_chunks_are_that_size(
    settings, kafka_bootstrap, kafka_topic, conversation, monkeypatch
):
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL caps a chunk's savepoints")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_CONSUMER_SUBTRANSACTIONS = 3
    rows = [publish_event(PLAIN, data(conversation, n)) for n in range(10)]
    sizes: list[int] = []
    real = Handling.handle_batch

    def sized(self, deliveries, **kwargs):
        sizes.append(len(deliveries))
        return real(self, deliveries, **kwargs)

    monkeypatch.setattr(Handling, "handle_batch", sized)
    outside = Outside()
    with registered(PLAIN, outside.plain):
        send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
        consumer = consume(kafka_topic, unique_group(), batch_size=200)

    assert consumer.stats.outcomes == {"handled": 10}
    assert collections.Counter(outside.sent) == {row.event.event_id: 1 for row in rows}
    assert sizes == [10, 3, 3, 1]  # the first ends at 3 savepoints, the next are of 3
