"""Scheduled events: ``publish_event(deliver_at=...)`` / ``delay=...`` (docs/scheduling.rst)."""

from __future__ import annotations

import datetime
import time

import pytest
from django.db import transaction
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.exceptions import InvalidEvent
from django_outbox.models import OutboxMessage, Status, retry_time, scheduled_time
from django_outbox.models.claiming import claim
from django_outbox.ops.status import database_status
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import IGNORE_LEAKED_SOCKETS, make_rows, run_in_thread, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TYPE = "test.scheduled"


@pytest.fixture(autouse=True)
def quiet(settings):
    settings.OUTBOX_WAKE_RELAY = False


def test_delay_holds_the_row_until_then():
    before = timezone.now()
    row = publish_event(TYPE, {"n": 1}, delay=datetime.timedelta(minutes=5))
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.status == Status.PENDING and stored.retry_count == 0
    assert stored.next_retry_at == row.next_retry_at
    expected = before + datetime.timedelta(minutes=5)
    assert expected - datetime.timedelta(seconds=1) < stored.next_retry_at
    assert stored.next_retry_at < expected + datetime.timedelta(seconds=5)
    assert stored.next_retry_at.microsecond != 0  # never a whole second: not a lease
    rows = OutboxMessage.objects
    assert list(rows.scheduled().values_list("pk", flat=True)) == [row.pk]
    assert not rows.due().exists() and not rows.backing_off().exists()
    assert not rows.in_flight().exists()


def test_deliver_at_on_a_whole_second_is_moved_off_it():
    at = (timezone.now() + datetime.timedelta(hours=1)).replace(microsecond=0)
    row = publish_event(TYPE, {}, deliver_at=at)
    stored = OutboxMessage.objects.get(pk=row.pk).next_retry_at
    assert stored == at + datetime.timedelta(milliseconds=1)
    assert OutboxMessage.objects.scheduled().count() == 1


@pytest.mark.parametrize(
    ("when", "said"),
    [
        (
            {"deliver_at": datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)},
            "deliver_at 2001-01-01T00:00:00+00:00 is not in the future",
        ),
        ({"delay": datetime.timedelta(seconds=-30)}, "delay -1 day, 23:59:30 is not in the"),
        ({"delay": datetime.timedelta(0)}, None),
    ],
    ids=["past", "negative-delay", "zero-delay"],
)
def test_a_time_not_in_the_future_is_now_and_says_so(when, said, caplog):
    with caplog.at_level("INFO", logger="django_outbox.publish.write"):
        row = publish_event(TYPE, {}, **when)
    assert OutboxMessage.objects.get(pk=row.pk).next_retry_at is None
    assert OutboxMessage.objects.due().count() == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "django_outbox.publish.write"]
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and said in messages[0], messages
        assert f"publish_event({TYPE!r})" in messages[0] and "due at once" in messages[0]


def test_a_future_time_says_nothing(caplog):
    with caplog.at_level("INFO", logger="django_outbox.publish.write"):
        publish_event(TYPE, {}, delay=datetime.timedelta(hours=1))
        publish_event(TYPE, {})
    assert not [r for r in caplog.records if r.name == "django_outbox.publish.write"]


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"deliver_at": datetime.datetime(2031, 1, 1, 12, 0)}, "has no time zone"),
        (
            {
                "deliver_at": timezone.now() + datetime.timedelta(hours=1),
                "delay": datetime.timedelta(hours=1),
            },
            "not both",
        ),
        ({"delay": 30}, "must be a datetime.timedelta"),
        ({"deliver_at": "2031-01-01T00:00:00Z"}, "must be a datetime.datetime"),
    ],
    ids=["naive", "both", "delay-number", "deliver-at-string"],
)
def test_bad_times_write_nothing(when, message):
    with pytest.raises(InvalidEvent, match=message):
        publish_event(TYPE, {}, **when)
    assert not OutboxMessage.objects.exists()


def test_without_use_tz_an_aware_time_is_made_local(settings):
    from django_outbox.publish.write import _not_before

    settings.USE_TZ = False
    now = timezone.now()  # naive, local
    aware = timezone.make_aware(now + datetime.timedelta(hours=1), datetime.timezone.utc)
    held = _not_before(now, aware, None)
    assert held is not None and timezone.is_naive(held)
    assert held == scheduled_time(now, timezone.make_naive(aware))
    assert _not_before(now, now + datetime.timedelta(hours=1), None) is not None  # naive: fine


def test_a_rollback_takes_the_scheduled_row_with_it():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_event(TYPE, {}, delay=datetime.timedelta(seconds=30))
        raise RuntimeError("business failed")
    assert not OutboxMessage.objects.exists()


def test_scheduled_is_not_backing_off():
    now = timezone.now()
    later = retry_time(now, 600)
    scheduled, retried, released = make_rows(3, "t")
    rows = OutboxMessage.objects
    rows.filter(pk=scheduled.pk).update(next_retry_at=later)
    rows.filter(pk=retried.pk).update(next_retry_at=later, retry_count=1, last_error="boom")
    # A relay gives rows back later without counting an attempt, with the reason.
    rows.filter(pk=released.pk).update(next_retry_at=later, last_error="Kafka unreachable")
    assert set(rows.scheduled(now).values_list("pk", flat=True)) == {scheduled.pk}
    assert set(rows.backing_off(now).values_list("pk", flat=True)) == {retried.pk, released.pk}
    figures = database_status("default", now=now)
    assert figures.pending == {"ready": 0, "scheduled": 1, "backing_off": 2, "in_flight": 0}


def test_scheduled_time_is_never_a_whole_second():
    now = timezone.now()
    whole = (now + datetime.timedelta(seconds=10)).replace(microsecond=0)
    assert scheduled_time(now, whole) == whole + datetime.timedelta(milliseconds=1)
    assert scheduled_time(now, now - datetime.timedelta(seconds=1)) is None


def test_the_claim_skips_a_scheduled_row():
    row = publish_event(TYPE, {}, delay=datetime.timedelta(minutes=1))
    assert claim("default", 100, 30).rows == []
    OutboxMessage.objects.filter(pk=row.pk).update(
        next_retry_at=timezone.now() - datetime.timedelta(milliseconds=1)
    )
    assert [r.id for r in claim("default", 100, 30).rows] == [row.pk]


def test_strict_order_a_scheduled_row_holds_its_key(settings):
    settings.OUTBOX_STRICT_ORDER = True
    first = publish_event(TYPE, {"n": 1}, key="k", topic="t", delay=datetime.timedelta(minutes=1))
    second = publish_event(TYPE, {"n": 2}, key="k", topic="t")
    other = publish_event(TYPE, {"n": 3}, key="j", topic="t")
    assert [r.id for r in claim("default", 100, 30).rows] == [other.pk]
    OutboxMessage.objects.filter(pk=first.pk).send_now(timezone.now())
    assert [r.id for r in claim("default", 100, 30).rows] == [first.pk]
    assert second.pk not in [r.id for r in claim("default", 100, 30).rows]


def published(row: OutboxMessage) -> bool:
    return OutboxMessage.objects.filter(pk=row.pk, status=Status.PUBLISHED).exists()


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_the_relay_sends_it_at_its_time_not_before(relay_settings, kafka_bootstrap, kafka_topic):
    now = publish_before = timezone.now()
    scheduled = publish_event(TYPE, {"when": "later"}, delay=datetime.timedelta(seconds=1.5))
    right_away = publish_event(TYPE, {"when": "now"})
    relay = Relay(interval=0.05)
    thread = run_in_thread(relay)
    try:
        wait_for(lambda: published(right_away), 30, "the row that is due now")
        seen_pending = 0
        while timezone.now() < scheduled.next_retry_at - datetime.timedelta(milliseconds=100):
            row = OutboxMessage.objects.get(pk=scheduled.pk)
            assert row.status == Status.PENDING, "sent before its time"
            seen_pending += 1
            time.sleep(0.05)
        assert seen_pending > 0
        wait_for(lambda: published(scheduled), 30, "the scheduled row, once due")
    finally:
        relay.stop()
        thread.join(30)
    row = OutboxMessage.objects.get(pk=scheduled.pk)
    assert row.published_at >= scheduled.next_retry_at > now
    assert row.retry_count == 0 and row.last_error is None
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=2)
    assert len(records) == 2
    sent = {r.value: r.timestamp for r in records}
    (late,) = [ts for value, ts in sent.items() if b'"later"' in value]
    assert late / 1000 >= publish_before.timestamp() + 1.4
