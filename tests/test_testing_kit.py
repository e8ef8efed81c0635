"""django_outbox.testing: capture_events(), assert_published(), run_handlers(), drain()."""

from __future__ import annotations

import datetime
import types
from unittest import mock

import pytest
from django.db import transaction
from django.test import TestCase
from hypothesis import given
from hypothesis import strategies as st

from django_outbox import Event, publish_event, signals
from django_outbox.consumer import Outcome
from django_outbox.models import OutboxMessage, Status
from django_outbox.testing import (
    HandlerFailed,
    OutboxStuck,
    assert_published,
    capture_events,
    drain,
    run_handlers,
)
from django_outbox.testing.matching import differences
from testproject.chat.models import Conversation

from .consumer_support import (
    BROKEN,
    COUNTER,
    FAST_GROUP,
    broken_handler,
    count_handler,
    registered,
    unique_group,
)
from .relay_support import IGNORE_LEAKED_SOCKETS, closed_port, leaked_sockets_collected


@pytest.fixture(autouse=True)
def kit_settings(settings):
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_CONSUMER_GROUP = unique_group()
    return settings


def count(conversation: Conversation) -> int:
    conversation.refresh_from_db()
    return conversation.message_count


# ---------------------------------------------------------------- capture, in a test's transaction


@pytest.mark.django_db
def test_the_fixture_sees_what_the_test_published(outbox_events):
    publish_event("order.paid", {"order": 7, "total": "9.90", "lines": [1, 2]}, key="7")
    captured = outbox_events.assert_published("order.paid", key="7", data={"total": "9.90"})
    assert captured.data["order"] == 7 and captured.alias == "default"
    assert captured.row.status == Status.PENDING and captured.id == captured.row.pk
    assert outbox_events.event_types == ["order.paid"]
    with pytest.raises(AssertionError, match=r"data\['total'\]: expected '1.00', got '9.90'"):
        outbox_events.assert_published("order.paid", data={"total": "1.00"})


@pytest.mark.django_db
def test_a_rolled_back_block_records_nothing_and_the_miss_says_so():
    with capture_events() as events:
        with pytest.raises(ValueError):
            with transaction.atomic():
                publish_event("order.paid", {"order": 1})
                raise ValueError
        publish_event("order.created", {"order": 2})
    assert events.event_types == ["order.created"]
    assert [one.event_type for one in events.uncommitted] == ["order.paid"]
    with pytest.raises(AssertionError) as failure:
        events.assert_published("order.paid", data={"order": 1})
    message = str(failure.value)
    assert "no published event matches: 'order.paid', data={'order': 1}" in message
    assert "event_type: expected 'order.paid', got 'order.created'" in message
    assert "1 matching event(s) were written by publish_event() but their transaction" in message


@pytest.mark.django_db
def test_an_event_counts_once_its_own_atomic_block_is_left():
    with capture_events() as events:
        with transaction.atomic():
            with transaction.atomic():
                publish_event("a.b", {})
            assert events.event_types == []  # the outer block is still open
        assert events.event_types == ["a.b"]
        assert_published("a.b")


@pytest.mark.django_db(databases=["default", "other"])
def test_every_database_is_captured(settings):
    settings.OUTBOX_DATABASES = ["default", "other"]
    with capture_events() as events:
        publish_event("a.b", {"n": 1}, using="other")
        with transaction.atomic(using="other"):
            publish_event("a.b", {"n": 2}, using="other")
        publish_event("a.b", {"n": 3})
    assert [(one.alias, one.data["n"]) for one in events] == [
        ("other", 1),
        ("other", 2),
        ("default", 3),
    ]
    events.assert_published("a.b", alias="other", count=2)


@pytest.mark.django_db
def test_counts_exact_data_and_absence():
    with capture_events() as events:
        publish_event("a.b", {"x": 1, "y": 2}, key="k")
        publish_event("a.b", {"x": 1}, key="k")
    events.assert_published("a.b", data={"x": 1}, count=2)
    events.assert_published("a.b", data={"x": 1}, exact=True, count=1)
    events.assert_published("a.b", key=mock.ANY, data={"y": mock.ANY})
    with pytest.raises(AssertionError, match=r"expected 3 published event\(s\), found 2"):
        events.assert_published("a.b", count=3)
    events.assert_not_published("c.d")
    with pytest.raises(AssertionError, match="expected no such event, 2 published"):
        events.assert_not_published("a.b", key="k")
    with pytest.raises(TypeError, match="unknown criteria"):
        events.assert_published("a.b", payload={})
    events.clear()
    events.assert_nothing_published()


@pytest.mark.django_db
def test_nested_captures_both_record_and_the_receiver_goes_away():
    with capture_events() as outer:
        publish_event("a.b", {})
        with capture_events() as inner:
            publish_event("c.d", {})
        assert inner.event_types == ["c.d"]
    assert outer.event_types == ["a.b", "c.d"]
    assert not signals.event_written.has_listeners()


def test_assert_published_without_a_capture_says_what_to_do():
    with pytest.raises(RuntimeError, match="no capture is open"):
        assert_published("a.b")


class CaptureInADjangoTestCase(TestCase):
    databases = {"default", "other"}

    def test_capture_and_on_commit_callbacks(self):
        with self.settings(OUTBOX_DATABASES=["default", "other"], OUTBOX_WAKE_RELAY=False):
            with capture_events() as events:
                with self.captureOnCommitCallbacks(execute=True):
                    publish_event("a.b", {"n": 1})
                publish_event("a.b", {"n": 2}, using="other")
                try:
                    with transaction.atomic():
                        publish_event("a.b", {"n": 3})
                        raise ValueError
                except ValueError:
                    pass
        self.assertEqual([one.data["n"] for one in events], [1, 2])


# ---------------------------------------------------------------- capture, real commits


@pytest.mark.django_db(transaction=True)
def test_with_real_transactions_only_commits_count():
    with capture_events() as events:
        publish_event("a.autocommit", {})
        with transaction.atomic():
            publish_event("a.committed", {})
            assert events.event_types == ["a.autocommit"]
        with pytest.raises(ValueError), transaction.atomic():
            publish_event("a.rolled_back", {})
            raise ValueError
        publish_event("a.scheduled", {}, delay=datetime.timedelta(hours=1))
    assert events.event_types == ["a.autocommit", "a.committed", "a.scheduled"]


@pytest.mark.django_db(transaction=True)
def test_a_commit_after_the_capture_ended_is_not_recorded():
    with transaction.atomic():
        with capture_events() as events:
            publish_event("a.b", {})
        assert events.event_types == []
    assert events.event_types == []


# ---------------------------------------------------------------- matching, property-based

json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


def fake(data):
    return types.SimpleNamespace(event_type="t", key="k", data=data, headers={}, alias="default")


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=5), st.data())
def test_any_part_of_the_data_matches_and_a_changed_value_does_not(data, draw):
    keys = draw.draw(st.lists(st.sampled_from(sorted(data)), unique=True) if data else st.just([]))
    part = {key: data[key] for key in keys}
    assert differences(fake(data), {"data": part}) == []
    assert differences(fake(data), {"data": data}, exact=True) == []
    if keys:
        changed = {**part, keys[0]: ["not", "this", object()]}
        found = differences(fake(data), {"data": changed})
        assert found and found[0].startswith(f"data[{keys[0]!r}]")


# ---------------------------------------------------------------- run_handlers()


@pytest.mark.django_db
def test_run_handlers_on_a_local_row_once():
    conversation = Conversation.objects.create(title="c")
    with registered(COUNTER, count_handler), capture_events() as events:
        publish_event(COUNTER, {"conversation_id": conversation.pk})
        [first] = run_handlers(events)
        [again] = run_handlers(events)
    assert (first.outcome, again.outcome) == (Outcome.HANDLED, Outcome.DUPLICATE)
    assert count(conversation) == 1
    assert OutboxMessage.objects.get(pk=events[0].id).status == Status.CONSUMED


@pytest.mark.django_db
def test_run_handlers_reports_a_failing_handler_with_its_traceback():
    with registered(BROKEN, broken_handler), capture_events() as events:
        publish_event(BROKEN, {})
        with pytest.raises(HandlerFailed) as failure:
            run_handlers(events)
        [result] = run_handlers(events, check=False)
    assert f"{BROKEN} {events[0].event.event_id}" in str(failure.value)
    assert "RuntimeError: broken handler refuses" in str(failure.value)
    assert "Traceback" in str(failure.value)
    assert result.outcome is Outcome.RETRY and not result.ok
    row = OutboxMessage.objects.get(pk=events[0].id)
    assert row.status == Status.PENDING and row.retry_count == 2


@pytest.mark.django_db
def test_run_handlers_on_bare_events_goes_through_the_inbox():
    conversation = Conversation.objects.create(title="c")
    event = Event(event_type=COUNTER, data={"conversation_id": conversation.pk}, key="k")
    unknown = Event(event_type="nobody.handles", data={}, key="k")
    with registered(COUNTER, count_handler):
        results = run_handlers([event, unknown, event])
    assert [one.outcome for one in results] == [Outcome.HANDLED, Outcome.SKIPPED, Outcome.DUPLICATE]
    assert "no handler registered for 'nobody.handles'" in results[1].error
    assert count(conversation) == 1


@pytest.mark.django_db
def test_run_handlers_hands_a_batch_handler_its_list():
    seen: list[list[int]] = []
    with registered("a.batch", lambda events: seen.append([e.data for e in events]), batch=True):
        with capture_events() as events:
            for n in range(3):
                publish_event("a.batch", n)
            run_handlers(events)
    assert seen == [[0, 1, 2]]


@pytest.mark.django_db
def test_run_handlers_of_another_group_leaves_the_row_alone():
    conversation = Conversation.objects.create(title="c")
    with registered(COUNTER, count_handler), capture_events() as events:
        publish_event(COUNTER, {"conversation_id": conversation.pk})
        run_handlers(events, group="reporting")
        run_handlers(events, group="reporting")
    assert count(conversation) == 1
    assert OutboxMessage.objects.get(pk=events[0].id).status == Status.PENDING


def follow_up(event: Event) -> None:
    publish_event("order.shipped", {"order": event.data["order"]}, key=event.key)


@pytest.mark.django_db
def test_events_a_handler_publishes_are_captured_too():
    with registered("order.paid", follow_up), capture_events() as events:
        publish_event("order.paid", {"order": 5}, key="5")
        run_handlers(events)
        events.assert_published("order.shipped", key="5", data={"order": 5})
        run_handlers(events.filter("order.shipped"))  # no handler here: skipped


def test_run_handlers_refuses_what_is_not_an_event():
    with pytest.raises(TypeError, match="captured events, outbox rows or Events"):
        run_handlers([{"event_type": "a.b"}])


# ---------------------------------------------------------------- drain(), the real broker


@pytest.fixture
def broker(relay_settings):
    relay_settings.OUTBOX_DATABASES = ["default"]
    relay_settings.OUTBOX_KAFKA_CONSUMER = dict(FAST_GROUP)
    return relay_settings


@pytest.mark.django_db(transaction=True)
def test_drain_relays_and_consumes_until_settled(broker):
    conversation = Conversation.objects.create(title="c")
    with registered(COUNTER, count_handler), registered("order.paid", follow_up):
        with capture_events() as events:
            publish_event(COUNTER, {"conversation_id": conversation.pk})
            publish_event("order.paid", {"order": 3}, key="3")
            publish_event("nobody.handles", {})
            drained = drain(timeout=60)  # the consumer's thread publishes the follow-up
    assert count(conversation) == 1
    statuses = dict(OutboxMessage.objects.values_list("event_type", "status"))
    assert statuses == {
        COUNTER: Status.CONSUMED,
        "order.paid": Status.CONSUMED,
        "order.shipped": Status.PUBLISHED,  # the follow-up, drained too; no handler here
        "nobody.handles": Status.PUBLISHED,
    }
    assert drained.consumed == 2 and drained.delivered == 4
    assert {row.event_type for row in drained.unhandled} == {"order.shipped", "nobody.handles"}
    events.assert_published("order.shipped", key="3")


@pytest.mark.django_db(transaction=True)
def test_drain_fails_on_a_row_that_went_dead_and_says_why(broker):
    with registered(BROKEN, broken_handler):
        row = publish_event(BROKEN, {}, max_retry=0)
        with pytest.raises(OutboxStuck) as stuck:
            drain(timeout=60)
    message = str(stuck.value)
    assert "drain(): 1 outbox row(s) went dead" in message
    assert f"default/{row.pk} {BROKEN} key={row.message_key!r}: dead" in message
    assert "RuntimeError: broken handler refuses" in message
    assert [one.id for one in stuck.value.rows] == [row.pk]
    with registered(BROKEN, broken_handler):
        assert drain(timeout=60, allow_dead=True).dead[0].id == row.pk


@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
@pytest.mark.django_db(transaction=True)
def test_drain_on_a_dead_broker_lists_the_stuck_rows_at_the_deadline(broker):
    broker.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    rows = [publish_event("nobody.handles", {"n": n}) for n in range(2)]
    with leaked_sockets_collected(), pytest.raises(OutboxStuck) as stuck:
        drain(timeout=3, rows=rows)
    message = str(stuck.value)
    assert "drain(): 2 outbox row(s) not settled after 3 s" in message
    for row in rows:
        assert f"default/{row.pk} nobody.handles" in message
    assert "KafkaConnectionError: broker 127.0.0.1:" in message  # each row's last error
    assert "relay: 0 row(s) delivered; consumer: 0 record(s) read" in message
    assert OutboxMessage.objects.filter(status=Status.PENDING).count() == 2


@pytest.mark.django_db(transaction=True)
def test_drain_waits_only_for_the_rows_asked_and_not_for_later_schedules(broker):
    scheduled = publish_event("a.later", {}, delay=datetime.timedelta(hours=1))
    drained = drain(timeout=30, rows=[scheduled])
    assert [row.id for row in drained.scheduled] == [scheduled.pk]
    assert OutboxMessage.objects.get(pk=scheduled.pk).status == Status.PENDING


@pytest.mark.django_db
def test_drain_in_an_open_transaction_says_to_commit(broker):
    with pytest.raises(RuntimeError, match=r"django_db\(transaction=True\)"):
        drain(timeout=1)
