"""Issue 18 part 1: relays that share one database by key (buckets.py).

Each key has one sender at a time: a relay claims only the keyed rows of the buckets it
owns, a bucket changes hands on a clean stop (given back) or when its lease ran out,
and several relays on one database deliver every row once with per-key order kept.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_outbox.models import OutboxMessage, Status, buckets
from django_outbox.models.buckets import BUCKETS, RelayBucket, RelayMember, bucket_of
from django_outbox.models.claiming import Owner, claim
from django_outbox.relay.buckets import SWEEP, Coordinator, fair_share
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import order_inversions, read_topic

from .relay_support import FAST_FAIL_PRODUCER, IGNORE_LEAKED_SOCKETS, make_rows, wait_for


@pytest.fixture
def shared_vendor(vendor):
    if not buckets.supported(vendor):
        pytest.skip("SQLite runs one relay: no buckets (W090 warns when a second one starts)")
    return vendor


#: What a transaction adds around a tick's statements (a test runs in one already).
FRAMING = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT")


def coordinator(name: str, lease: float = 10.0) -> Coordinator:
    return Coordinator("default", name, lease)


def keyed_rows(count: int, topic: str = "t", keys=None):
    return make_rows(count, topic, keys=keys or [f"k{i}" for i in range(count)])


# ------------------------------------------------------------------ the hash


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
            st.text(
                st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                min_size=1,
                max_size=60,
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_database_and_python_agree_on_every_bucket(shared_vendor, pairs):
    """Any topic, any key (any Unicode): the claim's SQL puts a row where ``bucket_of`` does."""
    OutboxMessage.objects.all().delete()
    rows = [make_rows(1, topic, keys=[key])[0] for topic, key in pairs]
    quote = connection.ops.quote_name
    table = quote(OutboxMessage._meta.db_table)
    expression = buckets.bucket_sql(
        connection, f"{table}.{quote('topic')}", f"{table}.{quote('message_key')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {quote('id')}, {expression} FROM {table}")
        in_sql = {pk: int(bucket) for pk, bucket in cursor.fetchall()}
    for row, (topic, key) in zip(rows, pairs, strict=True):
        assert in_sql[row.pk] == bucket_of(topic, key)
        assert 0 <= in_sql[row.pk] < BUCKETS


def test_rows_without_a_key_have_no_bucket():
    assert bucket_of("t", "") is None
    assert fair_share(3) == 22 and fair_share(0) == BUCKETS


# ------------------------------------------------------------------ ownership


@pytest.mark.django_db
def test_a_second_relay_gets_its_share_and_the_first_gives_it_back(shared_vendor):
    before = dict(RelayBucket.objects.values_list("bucket", "generation"))
    a, b = coordinator("a"), coordinator("b")
    assert a.tick() == 0 and a.holding.count == BUCKETS
    assert b.tick() == 0 and b.holding.count == 0  # nothing free yet; two members now
    surplus = a.tick()
    assert surplus == BUCKETS // 2
    assert a.give_back(surplus) == surplus
    b.tick()
    assert (a.holding.count, b.holding.count) == (BUCKETS // 2, BUCKETS // 2)
    assert not set(a.holding.buckets) & set(b.holding.buckets)
    owners = dict(RelayBucket.objects.values_list("bucket", "owner"))
    assert all(owners[n] == "b" for n in b.holding.buckets)
    # every change of hands counted one more generation
    # took, gave back, took: three changes of hands
    assert all(g == before.get(n, 0) + 3 for n, g in b.holding.buckets.items())
    c = coordinator("c")
    c.tick()
    for relay in (a, b):
        relay.give_back(relay.tick())
    c.tick()
    counts = sorted(relay.holding.count for relay in (a, b, c))
    assert sum(counts) == BUCKETS and counts[-1] <= fair_share(3)


@pytest.mark.django_db
def test_a_clean_stop_frees_every_bucket_at_once(shared_vendor):
    a, b = coordinator("a"), coordinator("b")
    a.tick()
    b.tick()
    a.leave()
    assert not RelayMember.objects.filter(name="a").exists()
    b.tick()
    assert b.holding.count == BUCKETS


@pytest.mark.django_db
def test_a_killed_relays_buckets_are_taken_once_their_lease_ran_out(shared_vendor, caplog):
    now = timezone.now()
    a, b = coordinator("a", lease=5), coordinator("b", lease=5)
    a.tick(now)
    b.tick(now)
    later = now + datetime.timedelta(seconds=4)
    b.tick(later)  # a's leases still run: nothing to take
    assert b.holding.count == 0
    expired = now + datetime.timedelta(seconds=5.5)
    b.tick(expired)
    assert b.holding.count == BUCKETS
    # a was only stalled: at its next tick it finds it owns nothing and says so
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        a.tick(expired)
    assert a.holding.count == 0 and "lost 64 bucket(s)" in caplog.text


@pytest.mark.django_db
def test_a_renewal_is_fenced_on_the_generation(shared_vendor):
    a = coordinator("a")
    a.tick()
    # the bucket changed hands behind a's back (and came back under the same name)
    RelayBucket.objects.filter(bucket=0).update(generation=F("generation") + 5)
    lease_before = RelayBucket.objects.get(bucket=0).lease_until
    a.tick(timezone.now() + datetime.timedelta(seconds=1))
    assert 0 not in a.holding.buckets
    # nor is its lease extended: it runs out, and the bucket's rows go to its next owner
    assert RelayBucket.objects.get(bucket=0).lease_until == lease_before
    assert RelayBucket.objects.get(bucket=1).lease_until > lease_before


@pytest.mark.django_db
def test_a_steady_tick_costs_the_same_few_statements_for_one_bucket_or_all(shared_vendor):
    def statements(call) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            call()
        sqls = [query["sql"] for query in captured.captured_queries]
        return [sql for sql in sqls if not sql.startswith(FRAMING)]

    a = coordinator("a")
    a.tick()
    assert a.holding.count == BUCKETS
    every = statements(a.tick)
    # heartbeat, count of members, one UPDATE of the leases and one read back
    assert len(every) == 4 and a.holding.count == BUCKETS
    assert not any(" OR " in sql for sql in every)
    a.give_back(BUCKETS - 1)
    assert len(statements(lambda: a._renew(timezone.now()))) == 2
    assert a.holding.count == 1


@pytest.mark.django_db
def test_taking_and_giving_back_every_bucket_is_one_update_each(shared_vendor):
    a = coordinator("a")
    with CaptureQueriesContext(connection) as captured:
        a.tick()
    updates = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    assert a.holding.count == BUCKETS
    assert len([sql for sql in updates if "relay_bucket" in sql]) == 1
    with CaptureQueriesContext(connection) as captured:
        assert a.give_back() == BUCKETS
    assert len([q for q in captured.captured_queries if q["sql"].startswith("UPDATE")]) == 1
    assert a.holding.count == 0 and a.holding.until is None
    assert not RelayBucket.objects.filter(owner="a").exists()


@pytest.mark.django_db
def test_members_gone_for_an_hour_are_forgotten_once_a_sweep_is_due(shared_vendor):
    now = timezone.now()
    long_ago = now - datetime.timedelta(hours=2)
    RelayMember.objects.create(
        name="gone", started_at=long_ago, heartbeat_at=long_ago, alive_until=long_ago
    )
    a = coordinator("a")
    a.tick(now)
    assert not RelayMember.objects.filter(name="gone").exists()
    RelayMember.objects.create(
        name="gone too", started_at=long_ago, heartbeat_at=long_ago, alive_until=long_ago
    )
    a.tick(now + datetime.timedelta(seconds=1))  # the next sweep is a minute away
    assert RelayMember.objects.filter(name="gone too").exists()
    a.tick(now + datetime.timedelta(seconds=SWEEP))
    assert not RelayMember.objects.filter(name="gone too").exists()
    assert a.holding.members == 1


# ------------------------------------------------------------------ the claim's fence


@pytest.mark.django_db
def test_a_tick_chosen_as_a_deadlocks_victim_runs_again_and_keeps_nothing_it_rolled_back(
    shared_vendor, monkeypatch
):
    """InnoDB rolled a tick back whole: the holding forgets what that tick took, and the
    tick runs again at once (three relays on MariaDB met this in CI)."""
    from django.db import OperationalError

    from django_outbox.relay import deadlocks

    monkeypatch.setattr(deadlocks.time, "sleep", lambda seconds: None)
    a = coordinator("a")
    real_take, calls = a._take, []

    def take_then_deadlock(now, wanted):
        real_take(now, wanted)
        calls.append(a.holding.count)
        if len(calls) == 1:
            raise OperationalError(1213, "Deadlock found when trying to get lock")

    monkeypatch.setattr(a, "_take", take_then_deadlock)
    a.tick()
    assert calls == [BUCKETS, BUCKETS]  # the second tick started from nothing held
    assert a.holding.count == BUCKETS
    owned = dict(RelayBucket.objects.filter(owner="a").values_list("bucket", "generation"))
    assert owned == a.holding.buckets and all(g == 1 for g in owned.values())

    # a failure that is not a deadlock is the caller's, and the holding is what it was
    def fail(now, wanted):
        raise OperationalError(2006, "MySQL server has gone away")

    b = coordinator("b")
    monkeypatch.setattr(b, "_take", fail)
    RelayBucket.objects.update(owner=None, lease_until=None)
    with pytest.raises(OperationalError):
        b.tick()
    assert b.holding.count == 0 and b.holding.until is None


@pytest.mark.django_db
def test_a_relay_claims_only_the_keys_of_its_buckets_and_every_keyless_row(shared_vendor):
    rows = keyed_rows(40)
    (keyless,) = make_rows(1, "t", keys=[""])
    a, b = coordinator("a"), coordinator("b")
    a.tick()
    b.tick()
    a.give_back(a.tick())
    b.tick()
    now = timezone.now()
    mine = {
        name: claim("default", 100, 30, owner=Owner(name, relay.lease_cap(now)))
        for name, relay in (("a", a), ("b", b))
    }
    claimed = {name: {row.id for row in batch.rows} for name, batch in mine.items()}
    assert not claimed["a"] & claimed["b"]
    assert claimed["a"] | claimed["b"] == {row.pk for row in rows} | {keyless.pk}
    for name, relay in (("a", a), ("b", b)):
        for row in mine[name].rows:
            if row.message_key:
                assert bucket_of(row.topic, row.message_key) in relay.holding.buckets


@pytest.mark.django_db
@pytest.mark.parametrize("whole", [False, True], ids=["by-bucket", "whole"])
def test_a_stalled_relay_that_lost_its_buckets_claims_none_of_their_rows(shared_vendor, whole):
    keyed_rows(10)
    a = coordinator("a", lease=5)
    now = timezone.now()
    a.tick(now)
    cap = a.lease_cap(now)
    # a stalls; its leases run out and b takes every bucket
    b = coordinator("b", lease=5)
    b.tick(now + datetime.timedelta(seconds=6))
    stale = claim(
        "default",
        100,
        30,
        owner=Owner("a", cap, whole=whole),
        now=now + datetime.timedelta(seconds=6),
    )
    assert stale.rows == []


@pytest.mark.django_db
def test_a_relay_alone_claims_every_row_and_no_keyed_one_once_it_lost_a_bucket(shared_vendor):
    """The claim of a relay that held every bucket at its last tick counts the buckets
    once per statement instead of hashing each row; if one changed hands since, it
    takes the keyless rows only until its next tick says which."""
    rows = keyed_rows(30)
    (keyless,) = make_rows(1, "t", keys=[""])
    a = coordinator("a")
    now = timezone.now()
    a.tick(now)
    owner = Owner("a", a.lease_cap(now), whole=a.holding.count == BUCKETS)
    assert owner.whole
    with CaptureQueriesContext(connection) as captured:
        batch = claim("default", 10, 30, owner=owner, now=now)
    assert len(batch) == 10
    assert not any("md5" in query["sql"].lower() for query in captured.captured_queries)
    OutboxMessage.objects.filter(pk__in=[row.id for row in batch.rows]).delete()
    lost = bucket_of("t", rows[-1].message_key)
    RelayBucket.objects.filter(bucket=lost).update(owner="b", generation=F("generation") + 1)
    later = claim("default", 100, 30, owner=owner, now=now)
    assert [row.id for row in later.rows] == [keyless.pk]
    a.tick(now + datetime.timedelta(seconds=1))
    assert a.holding.count == BUCKETS - 1
    owner = Owner("a", a.lease_cap(now), whole=a.holding.count == BUCKETS)
    rest = claim("default", 100, 30, owner=owner, now=now + datetime.timedelta(seconds=1))
    expected = {row.pk for row in rows[10:] if bucket_of("t", row.message_key) != lost}
    assert {row.id for row in rest.rows} == expected


@pytest.mark.django_db
def test_a_claimed_row_never_outlives_its_buckets_lease(shared_vendor):
    keyed_rows(3)
    a = coordinator("a", lease=10)
    now = timezone.now()
    a.tick(now)
    cap = a.lease_cap(now)
    batch = claim("default", 100, 60, owner=Owner("a", cap), now=now)
    assert len(batch) == 3
    assert batch.lease <= cap and batch.lease.microsecond == 0
    assert OutboxMessage.objects.in_flight(now).count() == 3  # still a whole second


# ------------------------------------------------------------------ relays at work


def _run(relay: Relay) -> threading.Thread:
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return thread


def _owned(relays) -> list[int]:
    return [sum(c.holding.count for c in relay.coordinators.values()) for relay in relays]


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_three_relays_share_the_keys_and_keep_each_keys_order(
    shared_vendor, settings, kafka_bootstrap, kafka_topic
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    settings.OUTBOX_WAKE_RELAY = False
    relays = [Relay(batch_size=50, interval=0.05, lease_seconds=10) for _ in range(3)]
    threads = [_run(relay) for relay in relays]
    try:
        # a joining relay gets its share without a restart of the others: the first
        # took every bucket, the next ones are given theirs within a few ticks
        wait_for(
            lambda: (
                all(_owned(relays))
                and sum(_owned(relays)) == BUCKETS
                and max(_owned(relays)) <= fair_share(3)
            ),
            15,
            "three relays sharing the buckets fairly",
        )
        keys = [f"order-{i}" for i in range(60)]
        made = make_rows(1800, kafka_topic, keys=keys, size=100)
        wait_for(
            lambda: OutboxMessage.objects.published().count() == len(made),
            60,
            "every row published",
        )
        status = buckets.assignment("default")
        assert sorted(r["buckets"] for r in status if r["alive"]) == sorted(_owned(relays))
    finally:
        for relay in relays:
            relay.stop()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert all(relay.delivered for relay in relays)  # they really shared the work
    assert sum(relay.delivered for relay in relays) == len(made)
    records = read_topic(kafka_bootstrap, kafka_topic, len(made))
    inversions = order_inversions(records)
    assert inversions == 0 and len(records) == len(made)
    assert not RelayBucket.objects.filter(owner__isnull=False).exists()  # all given back
    assert not RelayMember.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_stopping_relays_buckets_go_to_the_other_within_about_a_second(
    shared_vendor, relay_settings
):
    relay_settings.OUTBOX_WAKE_RELAY = False
    first, second = Relay(interval=0.05), Relay(interval=0.05)
    threads = [_run(first), _run(second)]
    try:
        wait_for(lambda: all(_owned([first, second])), 15, "two relays sharing")
        first.stop()
        threads[0].join(15)
        stopped = time.monotonic()
        wait_for(lambda: _owned([second]) == [BUCKETS], 10, "the second relay took every bucket")
        took = time.monotonic() - stopped
        assert took < 3.0, took
        (row,) = keyed_rows(1, relay_settings.OUTBOX_DEFAULT_TOPIC)
        wait_for(
            lambda: OutboxMessage.objects.get(pk=row.pk).status == Status.PUBLISHED,
            15,
            "a row sent by the remaining relay",
        )
    finally:
        first.stop()
        second.stop()
        for thread in threads:
            thread.join(30)


@pytest.mark.django_db
def test_sqlite_says_a_second_relay_cannot_keep_key_order(vendor, caplog):
    if vendor != "sqlite":
        pytest.skip("the warning is SQLite's (and any database without relay buckets)")
    relay = Relay()
    first, second = Coordinator("default", "one", 10), Coordinator("default", "two", 10)
    first.tick()
    second.tick()
    assert not second.enabled and second.holding.members == 2
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        relay.coordination.warn_if_not_alone(second)
        relay.coordination.warn_if_not_alone(second)  # once per database
    assert caplog.text.count("django_outbox.W090") == 1
    assert "run one relay" in caplog.text


@pytest.mark.django_db
def test_status_and_the_admin_summary_show_each_relays_buckets(shared_vendor, admin_client):
    import io
    import json

    from django.core.management import call_command

    a, b = coordinator("relay-a"), coordinator("relay-b")
    a.tick()
    b.tick()
    a.give_back(a.tick())
    b.tick()
    out = io.StringIO()
    call_command("outbox_status", "--json", stdout=out)
    (db,) = json.loads(out.getvalue())["databases"]
    owned = {relay["relay"]: relay["buckets"] for relay in db["relays"] if relay["alive"]}
    assert owned == {"relay-a": BUCKETS // 2, "relay-b": BUCKETS // 2}
    out = io.StringIO()
    call_command("outbox_status", stdout=out)
    assert "relays: 2 (buckets of 64: relay-a 32, relay-b 32)" in out.getvalue()
    page = admin_client.get("/admin/django_outbox/outboxmessage/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<code>relay-a</code> 32" in html and "<code>relay-b</code> 32" in html
