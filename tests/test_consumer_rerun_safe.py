"""Rerun-safe handlers (``@handler(..., rerun_safe=True)``): no savepoint of their own.

Consecutive rerun-safe handlers of a chunk share one lazy savepoint; when one fails,
they are rolled back together and those before it run again, alone. Safe handlers
(the default) still run once per delivery; database effects are once-only for both.
Side effects outside the database are counted in a Python list. Real databases.
"""

from __future__ import annotations

import collections
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings

from django_outbox import Event, handler, publish_event
from django_outbox.consumer import Delivery, Handling
from django_outbox.consumer import savepoints as lazy
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from django_outbox.registry import HandlerRegistry, registry
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
    outcomes,
    planned,
    plans,
    record_savepoints,
)

pytestmark = pytest.mark.django_db(transaction=True)

PLAIN = "test.rerun.plain"  # the default: once per delivery
AGAIN = "test.rerun.again"  # rerun-safe, per event
AGAIN_BATCH = "test.rerun.batch"  # rerun-safe batch handler


@pytest.fixture(autouse=True)
def outbox_config(settings):
    handling_settings(settings)
    settings.OUTBOX_TOPICS = {}


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="rerun-safe tests")


@pytest.fixture
def outside():
    """``Outside``'s handlers registered: PLAIN safe, AGAIN and AGAIN_BATCH rerun-safe."""
    effects = Outside()
    with (
        registered(PLAIN, effects.plain),
        registered(AGAIN, effects.plain, rerun_safe=True),
        registered(AGAIN_BATCH, effects.batch, batch=True, rerun_safe=True),
    ):
        yield effects


@pytest.fixture
def chunk_savepoints(monkeypatch) -> list[lazy.LazySavepoints]:
    """The ``LazySavepoints`` of each chunk handled."""
    return record_savepoints(monkeypatch)


def rows_of(conversation, kinds: list[str], failing: set[int]) -> list[OutboxMessage]:
    return [
        publish_event(kind, data(conversation, n, fail=n in failing), max_retry=3)
        for n, kind in enumerate(kinds)
    ]


def handle(rows: list[OutboxMessage]) -> list:
    return Handling("g").handle_batch([local(row, n) for n, row in enumerate(rows)])


def test_rerun_safe_handlers_before_a_failing_one_run_twice_their_effects_once(
    conversation, outside
):
    rows = rows_of(conversation, [AGAIN] * 5, failing={2})
    results = handle(rows)

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled", "handled", "retry", "handled", "handled"]
    runs = collections.Counter(outside.sent)
    assert [runs[i] for i in ids] == [2, 2, 1, 1, 1]  # rolled back together, then alone
    assert histories() == set(ids) - {ids[2]}  # each write once
    assert collections.Counter(outside.committed) == {i: 1 for i in ids if i != ids[2]}
    failed = OutboxMessage.objects.get(pk=rows[2].pk)
    assert (failed.status, failed.retry_count) == (Status.PENDING, 1)  # counted once


def test_safe_handlers_run_once_beside_a_failing_rerun_safe_one(conversation, outside):
    kinds = [PLAIN, AGAIN, PLAIN, AGAIN, AGAIN, PLAIN, AGAIN]
    rows = rows_of(conversation, kinds, failing={4})
    results = handle(rows)

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled"] * 4 + ["retry"] + ["handled"] * 2
    runs = collections.Counter(outside.sent)
    # The group of 3 and 4 is rolled back; 3 runs again; the safe ones never do.
    assert [runs[i] for i in ids] == [1, 1, 1, 2, 1, 1, 1]
    assert histories() == set(ids) - {ids[4]}
    assert collections.Counter(outside.committed) == {i: 1 for i in ids if i != ids[4]}
    assert OutboxMessage.objects.consumed().count() == 6


def test_a_failing_safe_handler_does_not_run_rerun_safe_neighbours_again(conversation, outside):
    rows = rows_of(conversation, [AGAIN, AGAIN, PLAIN, AGAIN], failing={2})
    results = handle(rows)

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled", "handled", "retry", "handled"]
    assert collections.Counter(outside.sent) == {i: 1 for i in ids}
    assert histories() == set(ids) - {ids[2]}


def test_rerun_safe_handlers_share_one_savepoint(conversation, outside, chunk_savepoints):
    rows = rows_of(conversation, [AGAIN, AGAIN, AGAIN, PLAIN, AGAIN, AGAIN], failing=set())
    with CaptureQueriesContext(connection) as queries:
        results = handle(rows)
    assert outcomes(results) == ["handled"] * 6
    # One for the first group, one for the safe handler, one for the second group.
    assert [made.count for made in chunk_savepoints] == [{"default": 3}]
    if connection.vendor == "postgresql":
        joined = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
        assert len(joined) == 3 and all("; INSERT" in sql for sql in joined)


def test_rerun_safe_handlers_do_not_meet_the_subtransaction_cap(conversation, outside, settings):
    settings.OUTBOX_CONSUMER_SUBTRANSACTIONS = 2
    rows = rows_of(conversation, [AGAIN] * 6, failing=set())
    assert outcomes(handle(rows)) == ["handled"] * 6
    assert len(outside.sent) == len(histories()) == 6


def test_a_rerun_safe_failure_alone_runs_once(conversation, outside):
    """A chunk of one (``Handling.handle``, the retry of a record): no neighbour to redo."""
    row = publish_event(AGAIN, data(conversation, 0, fail=True), max_retry=3)
    result = Handling("g").handle(local(row, 0))
    assert result.outcome.value == "retry"
    assert outside.sent == [row.event.event_id] and not histories()


@pytest.mark.parametrize("poison", ["malformed", "unknown type"])
def test_poison_between_rerun_safe_handlers_stays_isolated(conversation, outside, poison):
    """A rejected record or an unknown type ends the group: its record is kept even when
    a rerun-safe handler after it fails, and the handlers before it are not run again."""
    first = rows_of(conversation, [AGAIN, AGAIN], failing=set())
    later = publish_event(AGAIN, data(conversation, 5, fail=True), max_retry=3)
    if poison == "malformed":
        bad = Delivery("t", 0, 2, b"k", b"{not json", (("event_type", AGAIN.encode()),))
    else:
        bad = foreign("test.rerun.nobody", {"n": 9}, 2)
    deliveries = [local(first[0], 0), local(first[1], 1), bad, local(later, 3)]
    results = Handling("g").handle_batch(deliveries)

    assert outcomes(results) == [
        "handled",
        "handled",
        "rejected" if poison == "malformed" else "skipped",
        "retry",
    ]
    assert collections.Counter(outside.sent) == {
        first[0].event.event_id: 1,
        first[1].event.event_id: 1,
        later.event.event_id: 1,
    }
    assert histories() == {row.event.event_id for row in first}
    assert RejectedRecord.objects.filter(offset=2).count() == 1


def test_a_failing_rerun_safe_inbox_event_blocks_its_partition_only(conversation, outside):
    deliveries = [
        foreign(AGAIN, data(conversation, n, fail=n == 2), n // 2, partition=n % 2)
        for n in range(6)
    ]
    results = Handling("g").handle_batch(deliveries)

    # Partition 0 (0, 2, 4) waits behind 2; partition 1 goes on.
    assert outcomes(results) == ["handled", "handled", "retry_in_place", "handled", None, "handled"]
    ids = [uuid.UUID(d.header("event_id")) for d in deliveries]
    runs = collections.Counter(outside.sent)
    assert [runs[i] for i in ids] == [2, 2, 1, 1, 0, 1]
    handled = {ids[0], ids[1], ids[3], ids[5]}
    assert histories() == handled == set(InboxEntry.objects.values_list("event_id", flat=True))


def test_a_failing_rerun_safe_list_runs_its_events_again_alone(conversation, outside):
    rows = rows_of(conversation, [AGAIN, AGAIN_BATCH, AGAIN_BATCH, AGAIN_BATCH], failing={2})
    results = handle(rows)

    ids = [row.event.event_id for row in rows]
    assert outcomes(results) == ["handled", "handled", "retry", "handled"]
    runs = collections.Counter(outside.sent)
    assert [runs[i] for i in ids] == [2, 2, 2, 2]  # the list, then each alone
    assert histories() == set(ids) - {ids[2]} == set(outside.committed)


def test_rerun_safe_is_a_flag_of_the_registration():
    own = HandlerRegistry()

    @handler("test.rerun.flag", rerun_safe=True, registry=own)
    def flagged(event: Event) -> None:
        pass

    assert own.registration("test.rerun.flag").rerun_safe is True
    own.register("test.rerun.default", flagged)
    assert own.registration("test.rerun.default").rerun_safe is False
    with pytest.raises(TypeError, match="rerun_safe must be True or False"):
        handler("test.rerun.bad", rerun_safe="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rerun_safe must be True or False"):
        own.register("test.rerun.bad", flagged, rerun_safe=1)  # type: ignore[arg-type]
    assert "test.rerun.bad" not in own and "test.rerun.flag" not in registry


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans([PLAIN, AGAIN, AGAIN_BATCH]))
def test_mixes_safe_once_rerun_safe_at_most_twice_effects_once(conversation, plan):
    """Random chunks of safe and rerun-safe handlers: safe ones run once per record they
    get to, rerun-safe ones at most twice; the passing ones' writes and callbacks once."""
    deliveries, types = planned(conversation, plan)
    before = histories()
    effects = Outside()
    with (
        registered(PLAIN, effects.plain),
        registered(AGAIN, effects.plain, rerun_safe=True),
        registered(AGAIN_BATCH, effects.batch, batch=True, rerun_safe=True),
    ):
        results = Handling("g").handle_batch(deliveries)

    ids = list(types)
    handled = {ids[i] for i, r in enumerate(results) if r and r.outcome.value == "handled"}
    reached = {ids[i] for i, r in enumerate(results) if r is not None}
    assert handled == {i for i in reached if not types[i][1]}
    assert histories() - before == handled
    assert collections.Counter(effects.committed) == dict.fromkeys(handled, 1)
    sent = collections.Counter(effects.sent)
    for event_id, (event_type, _) in types.items():
        if event_type == PLAIN:
            assert sent[event_id] == (1 if event_id in reached else 0)
        else:
            assert sent[event_id] <= 3  # at most: in a failed group's list, its list, alone
            assert event_id not in reached or sent[event_id] >= 1


@pytest.mark.kafka
def test_on_the_broker_a_failing_neighbour_reruns_only_rerun_safe_handlers(
    settings, kafka_bootstrap, kafka_topic, conversation, outside
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    kinds = [PLAIN, AGAIN, AGAIN, PLAIN, AGAIN, AGAIN]
    rows = [
        publish_event(kind, data(conversation, n, fail=n == 5), max_retry=1)
        for n, kind in enumerate(kinds)
    ]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    consumer = consume(kafka_topic, unique_group(), batch_size=200)

    ids = [row.event.event_id for row in rows]
    assert consumer.stats.outcomes == {"handled": 5, "dead": 1}
    runs = collections.Counter(outside.sent)
    assert [runs[i] for i in ids] == [1, 1, 1, 1, 2, 1]  # 4 shares 5's group
    assert histories() == set(ids) - {ids[5]}
    assert OutboxMessage.objects.get(pk=rows[5].pk).status == Status.DEAD
