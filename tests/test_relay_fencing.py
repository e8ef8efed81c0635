"""Issue 16, defects 1 and 2: the claim has no floor, and a fence is a token unique to a claim.

1. A row that commits late below the relay's last claimed id still reaches Kafka before a
   later row of its key (the relay claims from the lowest due id every time).
2. Two claims of one row within one second share a lease value; a stale write-back of the
   first must not land on the second (every write-back is fenced on the claim's token).
"""

from __future__ import annotations

import datetime
import threading

import pytest
from django.db import connection, transaction
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_outbox import publish_event
from django_outbox.envelope import HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.claiming import Failure, claim, record_failed, record_published, release
from django_outbox.models.fencing import ClaimFence
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import IGNORE_LEAKED_SOCKETS, make_rows

SECOND = datetime.datetime(2026, 12, 6, 12, 0, 0, tzinfo=datetime.timezone.utc)


def at(offset: float) -> datetime.datetime:
    """A moment ``offset`` seconds after a whole second (claims in one second share a lease)."""
    return SECOND + datetime.timedelta(seconds=offset)


def handler_failed(pk: int, now: datetime.datetime, delay: float = 0.5) -> None:
    """What the consumer does when a handler raises: the row back to pending, backing off."""
    with transaction.atomic():
        row = OutboxMessage.objects.locked_for_handling([pk]).get()
        OutboxMessage.objects.handler_failed(row, "ValueError: boom", now, delay)


@pytest.mark.django_db
def test_a_stale_write_back_does_not_mark_a_later_claim_published():
    """The issue's reproduction: same second, same lease value, a retry in between."""
    (row,) = make_rows(1, "t")
    first = claim("default", 10, 30, now=at(0.1))
    assert [r.id for r in first.rows] == [row.pk]
    handler_failed(row.pk, at(0.15))  # the consumer got the record; its handler failed
    second = claim("default", 10, 30, now=at(0.7))  # due again at 0.65: taken again
    assert [r.id for r in second.rows] == [row.pk]
    assert second.lease == first.lease and second.token != first.token

    assert record_published(first, [row.pk]) == 0  # the delayed write-back of the first send
    stored = OutboxMessage.objects.get()
    assert (stored.status, stored.next_retry_at) == (Status.PENDING, second.lease)
    # The retry's own outcome still lands: here its failure is counted, not fenced out.
    failure = Failure(second.rows[0], "KafkaTimeoutError: no answer", definite=False)
    assert record_failed(second, [failure], at(0.9)) == 1
    stored.refresh_from_db()
    assert stored.status == Status.PENDING and stored.retry_count == 2
    assert not ClaimFence.objects.exists()


@pytest.mark.django_db
def test_every_write_back_is_fenced_on_the_token():
    (row,) = make_rows(1, "t")
    first = claim("default", 10, 30, now=at(0.1))
    release(first, [row.pk], at(0.2))  # given back, due at once
    second = claim("default", 10, 30, now=at(0.3))
    assert second.lease == first.lease
    failure = Failure(first.rows[0], "boom", final=True)
    assert record_failed(first, [failure], at(0.4)) == 0  # no dead row on a lost claim
    assert release(first, [row.pk], at(0.4)) == 0
    assert OutboxMessage.objects.get().next_retry_at == second.lease
    assert record_published(second, [row.pk]) == 1
    assert OutboxMessage.objects.get().status == Status.PUBLISHED


@pytest.mark.django_db
def test_a_claim_replaces_the_fence_a_dead_relay_left():
    (row,) = make_rows(1, "t")
    dead_relay = claim("default", 10, 30, now=at(0.1))
    successor = claim("default", 10, 30, now=dead_relay.lease)  # the lease ran out
    fence = ClaimFence.objects.get()
    assert (fence.outbox_id, fence.token) == (row.pk, successor.token)
    assert record_published(dead_relay, [row.pk]) == 0
    assert record_published(successor, [row.pk]) == 1


# Operations on one row: a claim, the consumer's failed handler, or the write-back of
# one of the claims made so far (published, backed off or released).
OPERATION = st.one_of(
    st.tuples(st.just("claim"), st.floats(0.0, 0.99)),
    st.tuples(st.just("handler_failed"), st.floats(0.0, 0.99)),
    st.tuples(st.sampled_from(["published", "failed", "released"]), st.integers(0, 5)),
)


@pytest.mark.django_db
@hypothesis_settings(max_examples=40, deadline=None)
@given(operations=st.lists(OPERATION, min_size=1, max_size=12))
def test_only_the_claim_that_holds_a_row_writes_it_back(operations):
    """Whatever the interleaving within one second: a write-back changes the row only
    when its claim is the last one taken and nothing moved the row since."""
    OutboxMessage.objects.all().delete()
    ClaimFence.objects.all().delete()
    (row,) = make_rows(1, "t")
    claims = []
    holder = None  # index of the claim that holds the row, per the model
    clock = 0.0
    for kind, value in operations:
        clock += 0.001  # time only moves on, all within one second (one lease value)
        stored = OutboxMessage.objects.get()
        if kind == "claim":
            clock = max(clock, value)
            batch = claim("default", 10, 30, now=at(clock))
            claims.append(batch)
            if batch.rows:
                holder = len(claims) - 1
            continue
        if kind == "handler_failed":
            if stored.status in (Status.PENDING, Status.PUBLISHED):
                handler_failed(row.pk, at(clock), delay=0.0001)
                holder = None
            continue
        if not claims:
            continue
        index = value % len(claims)
        batch = claims[index]
        if kind == "published":
            changed = record_published(batch, [row.pk], at(clock))
        elif kind == "failed":
            failure = Failure(row=stored_row(stored), error="timeout", definite=False)
            changed = record_failed(batch, [failure], at(clock))
        else:
            changed = release(batch, [row.pk], at(clock))
        assert changed == (1 if index == holder else 0), (kind, index, holder)
        if changed:
            holder = None


def stored_row(stored: OutboxMessage):
    from django_outbox.models.claiming import COLUMNS, ClaimedRow

    return ClaimedRow(*(getattr(stored, name) for name in COLUMNS))


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_late_commit_below_the_last_claim_still_goes_first(relay_settings, kafka_bootstrap):
    """The issue's reproduction: ``order.placed`` (id 1) commits late while the relay
    works through 20 other rows in batches of 2; then ``order.paid`` (id 22) for the
    same key. Kafka must have ``order.placed`` first."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer at a time: no row can commit below a later one")
    relay_settings.OUTBOX_WAKE_RELAY = False
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    written, commit = threading.Event(), threading.Event()
    placed: list[int] = []

    def late_request() -> None:
        try:
            with transaction.atomic():
                placed.append(publish_event("order.placed", {"n": 1}, key="order-1").pk)
                written.set()
                assert commit.wait(30)
        finally:
            connection.close()

    request = threading.Thread(target=late_request)
    request.start()
    assert written.wait(10)
    for n in range(20):
        publish_event("noise", {"n": n}, key=f"other-{n}")
    relay = Relay(batch_size=2, interval=0.05)
    try:
        for _ in range(4):  # the relay works through the first rows of the backlog
            assert relay.run_once() > 0
        commit.set()
        request.join(10)
        paid = publish_event("order.paid", {"n": 2}, key="order-1").pk
        assert placed and placed[0] < paid
        for _ in range(200):
            if not relay.run_once() and not OutboxMessage.objects.pending().exists():
                break
    finally:
        commit.set()
        request.join(10)
        relay.stop()
        relay.run()  # stopped already: settles what is in flight and closes the clients
    assert OutboxMessage.objects.published().count() == 22
    records = read_topic(kafka_bootstrap, topic, 22)
    order = [int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records if r.key == b"order-1"]
    assert order == [placed[0], paid]
