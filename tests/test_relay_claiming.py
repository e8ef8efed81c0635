"""Claims (leases in next_retry_at) and fenced write-backs, without Kafka."""

from __future__ import annotations

import datetime
import threading
import time
from contextlib import nullcontext

import pytest
from django.db import connection, transaction
from django.db.models.functions import TruncSecond
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from django_outbox.models import OutboxMessage, Status, lease_expiry
from django_outbox.models.claiming import (
    COLUMNS,
    ClaimedRow,
    Failure,
    claim,
    record_failed,
    record_published,
    release,
)
from django_outbox.models.fencing import ClaimFence

from .relay_support import make_rows

pytestmark = pytest.mark.django_db(transaction=True)


def test_claim_leases_due_rows_oldest_first(settings):
    rows = make_rows(5, "t")
    now = timezone.now()
    batch = claim("default", 3, 30, now=now)
    assert [r.id for r in batch.rows] == [r.pk for r in rows[:3]]
    assert batch.lease == lease_expiry(now, 30)
    assert batch.lease.microsecond == 0  # a whole second: "in flight", not "backing off"
    leased = OutboxMessage.objects.filter(next_retry_at=batch.lease)
    assert leased.count() == 3
    assert all(
        r.updated_at == now.replace(microsecond=now.microsecond // 1000 * 1000) for r in leased
    )
    assert OutboxMessage.objects.in_flight().count() == 3
    assert not OutboxMessage.objects.backing_off().exists()
    # Leased rows are not due: the next claim takes the others.
    again = claim("default", 10, 30, now=now)
    assert [r.id for r in again.rows] == [r.pk for r in rows[3:]]
    assert len(claim("default", 10, 30, now=now)) == 0


def test_claim_skips_backing_off_final_and_other_ids():
    rows = make_rows(4, "t")
    later = timezone.now() + datetime.timedelta(minutes=5, milliseconds=7)
    OutboxMessage.objects.filter(pk=rows[0].pk).update(next_retry_at=later)
    OutboxMessage.objects.filter(pk=rows[1].pk).update(status=Status.DEAD)
    batch = claim("default", 10, 30, ids=[rows[1].pk, rows[2].pk, rows[0].pk])
    assert [r.id for r in batch.rows] == [rows[2].pk]


def test_an_expired_lease_is_taken_again_with_a_later_lease():
    make_rows(1, "t")
    now = timezone.now()
    first = claim("default", 10, 1, now=now)
    assert len(claim("default", 10, 1, now=now)) == 0
    second = claim("default", 10, 1, now=first.lease)  # the lease ran out
    assert len(second) == 1 and second.lease > first.lease
    # The first holder's write-back is fenced off: nothing changes.
    assert record_published(first, [first.rows[0].id]) == 0
    assert record_failed(first, [Failure(first.rows[0], "late")]) == 0
    assert release(first, [first.rows[0].id]) == 0
    row = OutboxMessage.objects.get()
    assert (row.status, row.next_retry_at, row.retry_count) == (Status.PENDING, second.lease, 0)
    assert record_published(second, [row.pk]) == 1


def test_published_in_one_statement(django_assert_max_num_queries, vendor):
    # PostgreSQL: one statement; elsewhere one transaction (lock or update, then the
    # fence rows' DELETE): no more round trips than that.
    make_rows(4, "t")
    batch = claim("default", 10, 30)
    with django_assert_max_num_queries(1 if vendor == "postgresql" else 5):
        assert record_published(batch, [r.id for r in batch.rows]) == 4
    assert not ClaimFence.objects.exists()  # the write-back took its fence rows away
    for row in OutboxMessage.objects.all():
        assert row.status == Status.PUBLISHED
        assert row.published_at is not None and row.next_retry_at is None


def test_published_never_overwrites_consumed():
    make_rows(1, "t")
    batch = claim("default", 10, 30)
    # A consumer got the record before the relay recorded "published".
    OutboxMessage.objects.update(status=Status.CONSUMED, consumed_at=timezone.now())
    assert record_published(batch, [batch.rows[0].id]) == 0
    assert OutboxMessage.objects.get().status == Status.CONSUMED


def test_failure_backs_off_with_a_non_whole_second(settings):
    settings.OUTBOX_RETRY_BACKOFF_BASE = 10.0
    make_rows(2, "t")
    batch = claim("default", 10, 30)
    now = timezone.now()
    failures = [Failure(row, "KafkaTimeoutError: broker down") for row in batch.rows]
    assert record_failed(batch, failures, now) == 2
    for row in OutboxMessage.objects.all():
        assert row.status == Status.PENDING and row.retry_count == 1
        assert row.last_error == "KafkaTimeoutError: broker down"
        assert now + datetime.timedelta(seconds=4.9) <= row.next_retry_at
        assert row.next_retry_at <= now + datetime.timedelta(seconds=10)
    assert OutboxMessage.objects.backing_off().count() == 2
    assert not OutboxMessage.objects.in_flight().exists()
    assert not OutboxMessage.objects.filter(next_retry_at=TruncSecond("next_retry_at")).exists()


def test_dead_when_retries_are_spent_or_the_record_is_poison():
    rows = make_rows(3, "t", max_retry=2)
    OutboxMessage.objects.filter(pk=rows[0].pk).update(retry_count=1)
    batch = claim("default", 10, 30)
    by_id = {r.id: r for r in batch.rows}
    record_failed(
        batch,
        [
            Failure(by_id[rows[0].pk], "again"),  # 2nd failure of 2 allowed
            Failure(by_id[rows[1].pk], "MessageSizeTooLargeError", final=True),
            Failure(by_id[rows[2].pk], "first failure"),
        ],
    )
    got = {r.pk: r for r in OutboxMessage.objects.all()}
    assert (got[rows[0].pk].status, got[rows[0].pk].retry_count) == (Status.DEAD, 2)
    assert (got[rows[1].pk].status, got[rows[1].pk].retry_count) == (Status.DEAD, 1)
    assert (got[rows[2].pk].status, got[rows[2].pk].retry_count) == (Status.PENDING, 1)
    assert got[rows[0].pk].next_retry_at is None and got[rows[1].pk].next_retry_at is None


def test_long_errors_are_clipped():
    make_rows(1, "t")
    batch = claim("default", 10, 30)
    record_failed(batch, [Failure(batch.rows[0], "x" * 100_000)])
    assert len(OutboxMessage.objects.get().last_error) <= 16_000


def test_release_makes_rows_due_without_counting_an_attempt():
    make_rows(2, "t")
    batch = claim("default", 10, 30)
    assert release(batch, [r.id for r in batch.rows]) == 2
    assert OutboxMessage.objects.due().count() == 2
    assert set(OutboxMessage.objects.values_list("retry_count", flat=True)) == {0}


def test_burst_cutoff_leaves_rows_that_became_due_later():
    rows = make_rows(2, "t")
    start = timezone.now()
    OutboxMessage.objects.filter(pk=rows[0].pk).update(
        next_retry_at=start + datetime.timedelta(milliseconds=1)
    )
    later = start + datetime.timedelta(seconds=5)
    assert [r.id for r in claim("default", 10, 30, due_by=start, now=later).rows] == [rows[1].pk]


#: Creation times as any writer may store them: any offset, microseconds, or none.
created_times = st.none() | st.datetimes(
    min_value=datetime.datetime(1971, 1, 2),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.integers(-14 * 60, 14 * 60).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
    ),
)


@examples(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(created=created_times)
def test_a_claimed_rows_creation_time_is_the_stored_one(created):
    # PostgreSQL reads it as a UTC timestamp (the C loader) and makes it aware again
    OutboxMessage.objects.all().delete()
    (row,) = make_rows(1, "t")
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=created)
    stored = OutboxMessage.objects.values_list("created_at", flat=True).get(pk=row.pk)
    (claimed,) = claim("default", 10, 30).rows
    assert claimed.created_at == stored
    if created is not None:
        assert claimed.created_at.utcoffset() == datetime.timedelta(0)


def test_claim_filters_limits_and_fences_alike_on_every_database(vendor, django_assert_num_queries):
    # PostgreSQL claims in one UPDATE ... RETURNING, the others in three statements:
    # the same rows, the same lease, the same columns.
    r = [row.pk for row in make_rows(8, "t")]
    now = timezone.now().replace(microsecond=123456)
    OutboxMessage.objects.filter(pk=r[1]).update(
        next_retry_at=now + datetime.timedelta(minutes=5, milliseconds=7)  # backing off
    )
    OutboxMessage.objects.filter(pk=r[2]).update(status=Status.DEAD)
    OutboxMessage.objects.filter(pk=r[4]).update(retry_count=3, max_retry=7)
    other = claim("default", 10, 30, ids=[r[3]], now=now)  # another relay holds r3
    assert [row.id for row in other.rows] == [r[3]]

    with django_assert_num_queries(1) if vendor == "postgresql" else nullcontext():
        batch = claim("default", 2, 2.5, ids=r[6:0:-1], now=now)
    # r0 is not among the ids, r1 backs off, r2 is dead, r3 is leased; then 2 at most.
    assert [row.id for row in batch.rows] == [r[4], r[5]]
    expected = OutboxMessage.objects.filter(pk__in=[r[4], r[5]]).order_by("id")
    assert batch.rows == [ClaimedRow(*values) for values in expected.values_list(*COLUMNS)]
    assert (batch.rows[0].retry_count, batch.rows[0].max_retry) == (3, 7)
    assert (
        batch.lease
        == lease_expiry(now, 2.5)
        == now.replace(microsecond=0) + datetime.timedelta(seconds=3)
    )
    stored = {row.pk: row for row in OutboxMessage.objects.all()}
    for pk in (r[4], r[5]):
        assert stored[pk].next_retry_at == batch.lease
        assert stored[pk].updated_at == now.replace(microsecond=123000)
    assert stored[r[3]].next_retry_at == other.lease
    assert stored[r[6]].next_retry_at is None and stored[r[7]].next_retry_at is None
    assert OutboxMessage.objects.in_flight(now).count() == 3

    with django_assert_num_queries(0) if vendor == "postgresql" else nullcontext():
        assert len(claim("default", 10, 30, ids=[], now=now)) == 0

    # due_by: a row due just after the cutoff waits; r4 and r5 are still leased.
    OutboxMessage.objects.filter(pk=r[6]).update(
        next_retry_at=now + datetime.timedelta(milliseconds=1)
    )
    moment = now + datetime.timedelta(seconds=2)
    late = claim("default", 10, 30, due_by=now, now=moment)
    assert [row.id for row in late.rows] == [r[0], r[7]]

    # Leases that ran out are taken again, with a later lease; r0 and r7 are still held.
    again = claim("default", 10, 30, now=other.lease)
    assert [row.id for row in again.rows] == [r[3], r[4], r[5], r[6]]
    assert again.lease > other.lease > batch.lease
    assert record_published(other, [r[3]]) == 0
    assert record_published(batch, [r[4], r[5]]) == 0
    assert record_published(again, [row.id for row in again.rows]) == 4


def test_claim_skips_rows_another_transaction_has_locked(vendor):
    if vendor == "sqlite":
        pytest.skip("SQLite has no row locks (one writer at a time)")
    rows = make_rows(3, "t")
    locked, done = threading.Event(), threading.Event()

    def hold_lock() -> None:
        try:
            with transaction.atomic():
                # Another relay in the middle of its claim of the first row.
                list(OutboxMessage.objects.select_for_update().filter(pk=rows[0].pk))
                locked.set()
                done.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        started = time.monotonic()
        batch = claim("default", 10, 30)
        assert time.monotonic() - started < 5  # skipped, not waited for
    finally:
        done.set()
        holder.join(30)
    assert [row.id for row in batch.rows] == [rows[1].pk, rows[2].pk]
    assert [row.id for row in claim("default", 10, 30).rows] == [rows[0].pk]


def test_a_claim_in_progress_leaves_the_rest_of_the_backlog_to_others(vendor):
    """A claim locks only the rows it takes, not every due row it looked at."""
    if vendor == "sqlite":
        pytest.skip("SQLite has no row locks (one writer at a time)")
    from django_outbox.models.row_locks import lock_due_ids

    rows = make_rows(300, "t")
    locked, done = threading.Event(), threading.Event()
    taken: list[int] = []

    def claim_and_hold() -> None:
        try:
            with transaction.atomic():
                due = OutboxMessage.objects.due().order_by("id")
                taken.extend(lock_due_ids("default", due, 10))
                locked.set()
                done.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=claim_and_hold)
    holder.start()
    try:
        assert locked.wait(30)
        batch = claim("default", 10, 30)
    finally:
        done.set()
        holder.join(30)
    assert taken == [row.pk for row in rows[:10]]
    assert [row.id for row in batch.rows] == [row.pk for row in rows[10:20]]
