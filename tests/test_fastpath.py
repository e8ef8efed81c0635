"""The on_commit fast path: delivery from the committing process, off the request's path
("thread" mode, the default) or in it ("sync"), bounded in time either way."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from django_outbox import fastpath, kafka, publish_event
from django_outbox.claiming import claim
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    REPO_ROOT,
    closed_port,
    database_url,
    event_ids,
    leaked_sockets_collected,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]

both_modes = pytest.mark.parametrize("mode", ["thread", "sync"])


@pytest.fixture(autouse=True)
def fast_path_settings(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_FAST_PATH = True
    settings.OUTBOX_FAST_PATH_MODE = "thread"
    settings.OUTBOX_FAST_PATH_TIMEOUT = 5.0
    fastpath.reset_producer()
    with leaked_sockets_collected():
        yield settings
        # Before the database is flushed: the thread must neither hold a connection
        # nor touch the next test's rows.
        assert fastpath.stop(timeout=30)
        fastpath.reset_producer()


def handled() -> None:
    """Wait until the delivery thread has dealt with every commit so far."""
    assert fastpath.flush(timeout=30), "the fast path thread did not drain its queue"


@pytest.fixture
def gated_claims(monkeypatch):
    """Holds the delivery thread at its next claim until ``.open()``; records each claim."""

    class Gate:
        def __init__(self) -> None:
            self.entered = threading.Event()
            self.opened = threading.Event()
            self.claims: list[tuple[list[int], datetime.datetime, datetime.datetime]] = []

        def claim(self, alias, batch_size, lease_seconds, *, ids):
            self.entered.set()
            assert self.opened.wait(30), "the test never opened the gate"
            started = timezone.now()
            batch = claim(alias, batch_size, lease_seconds, ids=ids)
            self.claims.append((list(ids), started, batch.lease))
            return batch

        def wait_entered(self) -> None:
            assert self.entered.wait(30), "the delivery thread never reached its claim"

        def open(self) -> None:
            self.opened.set()

    gate = Gate()
    monkeypatch.setattr("django_outbox.fastpath.claim", gate.claim)
    yield gate
    gate.open()  # never leave the thread stuck


# --------------------------------------------------------------------------- delivery


@both_modes
def test_a_committed_event_reaches_kafka_without_a_relay(
    fast_path_settings, kafka_bootstrap, kafka_topic, mode
):
    fast_path_settings.OUTBOX_FAST_PATH_MODE = mode
    with transaction.atomic():
        first = publish_event("order.placed", {"n": 1}, key="k")
        second = publish_event("order.placed", {"n": 2}, key="k")
        assert OutboxMessage.objects.published().count() == 0  # not before the commit
    handled()
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [r.status for r in rows] == [Status.PUBLISHED] * 2
    assert all(r.published_at and r.next_retry_at is None for r in rows)
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=2)
    assert event_ids(records) == [str(first.event.event_id), str(second.event.event_id)]
    assert records[0].value == first.payload.encode()
    assert fastpath.stats.delivered == 2


@both_modes
def test_a_rolled_back_event_never_does(fast_path_settings, kafka_bootstrap, kafka_topic, mode):
    fast_path_settings.OUTBOX_FAST_PATH_MODE = mode
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            publish_event("order.placed", {"n": "rolled back"})
            raise RuntimeError("business failure")
    with transaction.atomic():
        kept = publish_event("order.placed", {"n": "kept"})
        try:
            with transaction.atomic():  # a savepoint rolled back inside a committed one
                publish_event("order.placed", {"n": "savepoint"})
                raise RuntimeError
        except RuntimeError:
            pass
    handled()
    assert OutboxMessage.objects.count() == 1
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=2, timeout=5)
    assert event_ids(records) == [str(kept.event.event_id)]


def test_the_fast_path_leases_briefly(fast_path_settings, gated_claims):
    fast_path_settings.OUTBOX_FAST_PATH_TIMEOUT = 1.5
    assert fastpath.lease_seconds() == 5  # twice the timeout plus 2 s, whole seconds
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    gated_claims.open()
    handled()
    ((ids, started, lease),) = gated_claims.claims
    assert ids == [row.pk]
    # lease_expiry rounds up to a whole second
    assert started + datetime.timedelta(seconds=5) <= lease
    assert lease <= started + datetime.timedelta(seconds=6)
    row.refresh_from_db()
    assert row.status == Status.PUBLISHED


# --------------------------------------------------------------------------- Kafka down


def test_kafka_unreachable_costs_the_commit_nothing_in_thread_mode(fast_path_settings, caplog):
    fast_path_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    fast_path_settings.OUTBOX_FAST_PATH_TIMEOUT = 2.0
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        started = time.monotonic()
        with transaction.atomic():
            row = publish_event("order.placed", {"n": 1})
        cost = time.monotonic() - started
        handled()
    # The thread spends the timeout failing to bootstrap; the commit does not wait for it.
    assert cost < 1.0, cost
    row.refresh_from_db()
    assert (row.status, row.retry_count, row.next_retry_at) == (Status.PENDING, 0, None)
    assert "rows go through the relay" in caplog.text
    assert fastpath.stats.claims == 0  # the producer comes first: the rows were never leased

    # The breaker is open: the next commit is not even queued.
    with transaction.atomic():
        second = publish_event("order.placed", {"n": 2})
    handled()
    assert fastpath.stats.skipped == 1
    second.refresh_from_db()
    assert second.status == Status.PENDING and second.next_retry_at is None


def test_kafka_unreachable_costs_the_commit_a_bounded_time_in_sync_mode(fast_path_settings, caplog):
    fast_path_settings.OUTBOX_FAST_PATH_MODE = "sync"
    fast_path_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    fast_path_settings.OUTBOX_FAST_PATH_TIMEOUT = 1.0
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        with transaction.atomic():
            row = publish_event("order.placed", {"n": 1})
    first_cost = time.monotonic() - started
    # Bounded by ~2 x OUTBOX_FAST_PATH_TIMEOUT (see docs/relay.rst), not by
    # kafka-python's 30-120 s defaults; 3 x leaves room for a slow machine.
    assert first_cost < 3 * 1.0, first_cost
    row.refresh_from_db()
    assert (row.status, row.retry_count, row.next_retry_at) == (Status.PENDING, 0, None)
    assert "rows go through the relay" in caplog.text

    # The breaker is open: the next commit does not even try.
    started = time.monotonic()
    with transaction.atomic():
        second = publish_event("order.placed", {"n": 2})
    assert time.monotonic() - started < 1.0
    second.refresh_from_db()
    assert second.status == Status.PENDING and second.next_retry_at is None


def test_the_relay_delivers_what_the_fast_path_left(fast_path_settings, kafka_bootstrap):
    topic = fast_path_settings.OUTBOX_DEFAULT_TOPIC
    fast_path_settings.OUTBOX_FAST_PATH = False
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    fast_path_settings.OUTBOX_FAST_PATH = True
    fast_path_settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    Relay(burst=True).run()
    row.refresh_from_db()
    assert row.status == Status.PUBLISHED
    assert len(read_topic(kafka_bootstrap, topic, expected_count=1)) == 1


@both_modes
def test_rows_a_relay_holds_are_left_alone(fast_path_settings, mode):
    fast_path_settings.OUTBOX_FAST_PATH = False
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    fast_path_settings.OUTBOX_FAST_PATH = True
    fast_path_settings.OUTBOX_FAST_PATH_MODE = mode
    held = claim("default", 10, 30)  # a relay got there between the commit and the fast path
    fastpath.deliver_after_commit("default", [row.pk])
    handled()
    row.refresh_from_db()
    assert (row.status, row.next_retry_at) == (Status.PENDING, held.lease)


@both_modes
def test_a_poison_row_goes_dead_in_the_fast_path(fast_path_settings, mode):
    fast_path_settings.OUTBOX_FAST_PATH_MODE = mode
    fast_path_settings.OUTBOX_KAFKA_PRODUCER = {"max_request_size": 10_000}
    with transaction.atomic():
        big = publish_event("order.placed", {"pad": "x" * 20_000})
        small = publish_event("order.placed", {"n": 1})
    handled()
    big.refresh_from_db()
    small.refresh_from_db()
    assert big.status == Status.DEAD and "MessageSizeTooLarge" in big.last_error
    assert small.status == Status.PUBLISHED


# --------------------------------------------------------------------------- the thread


def test_many_commits_coalesce_into_few_claims(fast_path_settings, gated_claims):
    with transaction.atomic():
        first = publish_event("order.placed", {"n": 0})
    gated_claims.wait_entered()  # the thread holds the first commit's ids
    rows = [first]
    for n in range(1, 30):  # meanwhile 29 more requests commit
        with transaction.atomic():
            rows.append(publish_event("order.placed", {"n": n}))
    gated_claims.open()
    handled()
    assert [ids for ids, _, _ in gated_claims.claims] == [
        [first.pk],
        [row.pk for row in rows[1:]],
    ]
    assert fastpath.stats.claims == 2 and fastpath.stats.handoffs == 30
    assert OutboxMessage.objects.published().count() == 30


def test_coalesced_batches_respect_the_batch_size(fast_path_settings, gated_claims):
    fast_path_settings.OUTBOX_BATCH_SIZE = 4
    with transaction.atomic():
        publish_event("order.placed", {"n": 0})
    gated_claims.wait_entered()
    with transaction.atomic():  # one transaction larger than a batch
        for n in range(6):
            publish_event("order.placed", {"n": n})
    for n in range(5):
        with transaction.atomic():
            publish_event("order.placed", {"n": n})
    gated_claims.open()
    handled()
    sizes = [len(ids) for ids, _, _ in gated_claims.claims]
    assert sizes == [1, 4, 2, 4, 1]  # first; the big one in two; the small ones by 4
    assert OutboxMessage.objects.published().count() == 12


def test_a_full_queue_drops_the_hand_off_without_blocking(
    fast_path_settings, gated_claims, monkeypatch, caplog
):
    monkeypatch.setattr(fastpath, "QUEUE_SIZE", 2)
    with transaction.atomic():
        first = publish_event("order.placed", {"n": 0})
    gated_claims.wait_entered()
    with transaction.atomic():
        queued = [publish_event("order.placed", {"n": 1})]
    with transaction.atomic():
        queued.append(publish_event("order.placed", {"n": 2}))
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        started = time.monotonic()
        with transaction.atomic():
            dropped = publish_event("order.placed", {"n": 3})
        assert time.monotonic() - started < 1.0
    assert fastpath.stats.dropped == 1
    assert "go through the relay" in caplog.text
    gated_claims.open()
    handled()
    for row in [first, *queued]:
        row.refresh_from_db()
        assert row.status == Status.PUBLISHED
    dropped.refresh_from_db()
    assert (dropped.status, dropped.next_retry_at) == (Status.PENDING, None)  # the relay's


def test_the_thread_survives_errors(fast_path_settings, monkeypatch, caplog):
    real_claim = fastpath.claim
    failures = iter([DatabaseError("connection lost")])

    def failing_once(*args, **kwargs):
        for error in failures:
            raise error
        return real_claim(*args, **kwargs)

    monkeypatch.setattr("django_outbox.fastpath.claim", failing_once)
    with caplog.at_level(logging.ERROR, logger="django_outbox"):
        with transaction.atomic():
            lost = publish_event("order.placed", {"n": 1})
        handled()
        fastpath.deliver_after_commit("no-such-alias", [1])
        handled()
    assert fastpath.stats.errors == 2
    assert caplog.text.count("fast path failed") == 2
    lost.refresh_from_db()
    assert (lost.status, lost.retry_count, lost.next_retry_at) == (Status.PENDING, 0, None)

    thread = fastpath._state.worker.thread
    with transaction.atomic():
        later = publish_event("order.placed", {"n": 2})
    handled()
    assert fastpath._state.worker.thread is thread and thread.is_alive()
    later.refresh_from_db()
    assert later.status == Status.PUBLISHED


def test_the_thread_holds_no_connection_when_idle(fast_path_settings, vendor):
    if vendor == "postgresql":
        sql = (
            "SELECT COUNT(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    elif vendor == "mysql":
        sql = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
        )
    else:
        pytest.skip("SQLite has no server to ask")
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    handled()
    row.refresh_from_db()
    assert row.status == Status.PUBLISHED
    with connection.cursor() as cursor:  # CONN_MAX_AGE = 0: closed after each batch
        cursor.execute(sql)
        assert cursor.fetchone()[0] == 0


def test_a_forked_child_starts_afresh_and_leaves_the_parent_alone(fast_path_settings):
    with transaction.atomic():
        publish_event("order.placed", {"n": 1})
    handled()
    parent_worker, parent_producer = fastpath._state.worker, fastpath._state.producer
    assert parent_worker is not None and parent_producer is not None

    pid = os.fork()
    if pid == 0:  # the child: no database, no pytest; only the fast path's own state
        code = 1
        try:
            fresh = fastpath._state.worker is None and fastpath._state.producer is None
            abandoned = any(p is parent_producer for p in kafka._ABANDONED)
            started = fastpath._worker()  # what the child's first commit would do
            if fresh and abandoned and started.thread.is_alive() and started.pid == os.getpid():
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    # The child closed nothing of ours: same thread, same producer, still delivering.
    assert fastpath._state.worker is parent_worker and parent_worker.thread.is_alive()
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 2})
    handled()
    assert fastpath._state.producer is parent_producer
    row.refresh_from_db()
    assert row.status == Status.PUBLISHED


@pytest.mark.slow
def test_a_script_that_publishes_then_exits_delivers_at_exit(
    fast_path_settings, kafka_bootstrap, kafka_topic
):
    script = textwrap.dedent(
        f"""
        import django
        django.setup()
        from django.db import transaction
        from django_outbox import publish_event
        with transaction.atomic():
            row = publish_event("order.placed", {{"n": 1}}, topic={kafka_topic!r})
        print(row.pk)
        """
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url("default"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PYTHONPATH": str(REPO_ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    row = OutboxMessage.objects.get(pk=int(result.stdout.split()[-1]))
    assert row.status == Status.PUBLISHED, result.stderr
    assert len(read_topic(kafka_bootstrap, kafka_topic, expected_count=1)) == 1


# --------------------------------------------------------------------------- API


def test_never_raises(fast_path_settings, caplog):
    fast_path_settings.OUTBOX_FAST_PATH_MODE = "sync"
    with caplog.at_level(logging.ERROR, logger="django_outbox"):
        fastpath.deliver_after_commit("no-such-alias", [1])
    assert "fast path failed" in caplog.text


def test_off_switch(fast_path_settings):
    fast_path_settings.OUTBOX_FAST_PATH = False
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    fastpath.deliver_after_commit("default", [row.pk])  # also honoured here
    handled()
    row.refresh_from_db()
    assert row.status == Status.PENDING
    assert fastpath._state.worker is None  # nothing started


def test_flush_without_a_thread_returns_at_once():
    assert fastpath._state.worker is None
    assert fastpath.flush(timeout=0) is True
    assert fastpath.stop(timeout=0) is True


def test_a_new_bootstrap_gets_a_new_producer(fast_path_settings):
    with transaction.atomic():
        publish_event("order.placed", {"n": 1})
    handled()
    first = fastpath._state.producer
    assert first is not None
    fast_path_settings.OUTBOX_KAFKA_PRODUCER = {"retry_backoff_ms": 50}
    with transaction.atomic():
        publish_event("order.placed", {"n": 2})
    handled()
    assert fastpath._state.producer is not first
    fastpath.reset_producer()
    assert fastpath._state.producer is None and fastpath._state.worker is None
    assert OutboxMessage.objects.published().count() == 2
