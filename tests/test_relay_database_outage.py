"""The relay through a database outage that starts as it writes back a batch Kafka acked.

Kafka has the rows; the write-back fails, so the relay keeps the outcome (``WriteBacks``).
When the database answers again the kept outcome is written on the next look, fenced on
the claim's token, and no row goes to Kafka a second time. The outage is at the database
layer: every statement of the relay's database thread raises ``OperationalError`` while it
lasts (``DatabaseOutage``), on SQLite, PostgreSQL and MariaDB alike.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from django.db import OperationalError
from django.db.backends.signals import connection_created
from django.utils import timezone

from django_outbox.models import OutboxMessage
from django_outbox.models.claiming import claim, record_published
from django_outbox.relay import write_back
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import (
    assert_each_row_once_in,
    event_ids,
    make_rows,
    row_event_ids,
    run_in_thread,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: The relay's database thread (``relay.dbthread.DatabaseThread``): the only one failed.
DATABASE_THREAD = "django-outbox-db"
ROWS = 50
#: Longer than the three attempts of one ``write_back`` (0.5 s + 1 s apart): kept.
OUTAGE = 4.0
#: The lease is far longer than the wait the tests allow after the outage: rows published
#: in time were written back by the claim that sent them, not sent again after the lease.
LEASE = 60.0
WRITTEN_WITHIN = 20.0


class DatabaseOutage:
    """Every statement of the relay's database thread raises while down: ``seconds``
    from the first write-back of acknowledged rows (``begin``), or until ``end()``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began: float | None = None
        self.ends = float("inf")
        self.statements_failed = 0

    def begin(self) -> None:
        if self.began is None:
            self.began = time.monotonic()
            self.ends = self.began + self.seconds

    def end(self) -> None:
        self.ends = min(self.ends, time.monotonic())

    def down(self) -> bool:
        return self.began is not None and time.monotonic() < self.ends

    def __call__(self, execute, sql, params, many, context):  # an execute wrapper
        if threading.current_thread().name == DATABASE_THREAD and self.down():
            self.statements_failed += 1
            raise OperationalError("server closed the connection unexpectedly (test outage)")
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs) -> None:
        """``connection_created``: wrap each connection the database thread opens."""
        if threading.current_thread().name == DATABASE_THREAD:
            if self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)


@pytest.fixture
def outage(request, monkeypatch) -> Iterator[DatabaseOutage]:
    """A database outage that begins with the first write-back of acknowledged rows
    (``OUTAGE`` seconds, or as long as ``@pytest.mark.parametrize("outage", [s],
    indirect=True)`` says)."""
    outage = DatabaseOutage(getattr(request, "param", OUTAGE))
    real = write_back.record_published

    def record_published(*args, **kwargs):
        outage.begin()
        return real(*args, **kwargs)

    monkeypatch.setattr(write_back, "record_published", record_published)
    connection_created.connect(outage.install, weak=False)
    try:
        yield outage
    finally:
        connection_created.disconnect(outage.install)


def published() -> int:
    return OutboxMessage.objects.published().count()


def assert_kept_outcome_written(outage: DatabaseOutage, caplog, written_at: float) -> None:
    assert outage.statements_failed >= 3  # the write-back's own attempts all failed
    assert "ran out before their outcome could be written" not in caplog.text
    # Told once, not once per look; and looked at with a pause, not every round (a
    # relay asking each round would fail some twenty statements a second).
    assert caplog.text.count("database 'default' failed") == 1
    assert outage.statements_failed <= 5 * outage.seconds
    # (a figure for the log, not an assertion: the machine is shared and noisy)
    logging.getLogger(__name__).warning(
        "kept outcome written %.2fs after the database came back; %d statement(s) failed",
        written_at - outage.ends,
        outage.statements_failed,
    )


def kept(relay: Relay) -> bool:
    return bool(relay.write_backs.unrecorded)


def run_through(relay: Relay, outage: DatabaseOutage, caplog, done, what: str) -> float:
    """Run ``relay`` through ``outage`` until ``done(thread)``; return when that was."""
    with caplog.at_level(logging.INFO, logger="django_outbox"):
        thread = run_in_thread(relay)
        try:
            wait_for(lambda: outage.began is not None, 30, "the first write-back")
            wait_for(lambda: not outage.down(), outage.seconds + 5, "the end of the outage")
            wait_for(lambda: done(thread), WRITTEN_WITHIN, what)
            return time.monotonic()
        finally:
            relay.stop()
            thread.join(30)
            assert not thread.is_alive()


# (15 s: long enough that a pause doubling to 30 s would outlast the wait allowed)
@pytest.mark.parametrize("outage", [OUTAGE, 15.0], indirect=True)
def test_steady_relay_writes_the_kept_outcome_once_the_database_is_back(
    relay_settings, kafka_bootstrap, outage, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(ROWS, topic)
    relay = Relay(batch_size=ROWS, lease_seconds=LEASE)
    written_at = run_through(
        relay, outage, caplog, lambda thread: published() == ROWS, "the kept outcome written"
    )
    assert_kept_outcome_written(outage, caplog, written_at)
    assert "database 'default' answers again" in caplog.text
    assert_each_row_once_in(kafka_bootstrap, topic)


def test_burst_writes_the_kept_outcome_once_the_database_is_back(
    relay_settings, kafka_bootstrap, outage, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(ROWS, topic)
    relay = Relay(batch_size=ROWS, lease_seconds=LEASE, burst=True)
    ended_at = run_through(
        relay, outage, caplog, lambda thread: not thread.is_alive(), "the end of the burst"
    )
    assert published() == ROWS
    assert relay.errors >= 1  # the command exits with an error: the database failed
    assert_kept_outcome_written(outage, caplog, ended_at)
    assert_each_row_once_in(kafka_bootstrap, topic)


@pytest.mark.parametrize("outage", [float("inf")], indirect=True)
def test_a_kept_outcome_of_rows_claimed_again_meanwhile_is_fenced_out(
    relay_settings, kafka_bootstrap, outage, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(ROWS, topic)
    relay = Relay(batch_size=ROWS, lease_seconds=LEASE)
    with caplog.at_level(logging.INFO, logger="django_outbox"):
        thread = run_in_thread(relay)
        try:
            wait_for(lambda: kept(relay), 30, "the outcome kept")
            # Another relay's claim, as if the lease had run out: a new lease, a new token.
            later = timezone.now() + datetime.timedelta(seconds=LEASE + 1)
            taken = claim("default", ROWS, LEASE, now=later)
            assert len(taken.rows) == ROWS
            outage.end()
            wait_for(lambda: not kept(relay), WRITTEN_WITHIN, "the kept outcome tried")
            wait_for(lambda: "no longer ours" in caplog.text, 10, "the fenced write logged")
        finally:
            relay.stop()
            thread.join(30)
    assert "50 of 50 acknowledged row(s) on 'default' were no longer ours" in caplog.text
    assert published() == 0
    assert set(OutboxMessage.objects.values_list("next_retry_at", flat=True)) == {taken.lease}
    assert record_published(taken, [row.id for row in taken.rows]) == ROWS  # still the other's
    assert_each_row_once_in(kafka_bootstrap, topic)


@pytest.mark.parametrize("outage", [float("inf")], indirect=True)
def test_a_stop_writes_the_kept_outcome_once_more(
    relay_settings, kafka_bootstrap, outage, monkeypatch, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(ROWS, topic)
    # A pause far longer than the test: only the stop's last try can write the outcome.
    monkeypatch.setattr(write_back, "KEPT_PAUSE", 600.0)
    relay = Relay(batch_size=ROWS, lease_seconds=LEASE, interval=60)
    with caplog.at_level(logging.INFO, logger="django_outbox"):
        thread = run_in_thread(relay)
        try:
            wait_for(lambda: kept(relay), 30, "the outcome kept")
            assert relay.outages.database_paused("default")
            outage.end()
            relay.stop()  # what the first SIGTERM does
        finally:
            thread.join(30)
    assert not thread.is_alive()
    assert published() == ROWS
    assert "stopping with the outcome" not in caplog.text
    assert_each_row_once_in(kafka_bootstrap, topic)


@pytest.mark.parametrize("outage", [float("inf")], indirect=True)
def test_a_stop_while_the_database_is_down_leaves_the_rows_leased_then_sent_again(
    relay_settings, kafka_bootstrap, outage, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    # The stopping relay cannot give its buckets back either; without buckets the next
    # relay need not wait for their lease too.
    relay_settings.OUTBOX_RELAY_BUCKETS = False
    make_rows(ROWS, topic)
    lease = 6.0
    relay = Relay(batch_size=ROWS, lease_seconds=lease)
    with caplog.at_level(logging.INFO, logger="django_outbox"):
        thread = run_in_thread(relay)
        try:
            wait_for(lambda: kept(relay), 30, "the outcome kept")
            relay.stop()
        finally:
            thread.join(30)
    assert not thread.is_alive()
    assert "stopping with the outcome of 50 row(s) of 'default' unwritten" in caplog.text
    assert OutboxMessage.objects.in_flight().count() == ROWS  # leased, no attempt spent
    assert set(OutboxMessage.objects.values_list("retry_count", flat=True)) == {0}

    outage.end()
    wait_for(lambda: OutboxMessage.objects.due().count() == ROWS, lease + 5, "the lease out")
    Relay(batch_size=ROWS, burst=True).run()
    assert published() == ROWS
    # Sent twice: the consumer takes the repeated event_id as a duplicate.
    expected = row_event_ids(OutboxMessage.objects.all())
    records = read_topic(kafka_bootstrap, topic, expected_count=2 * ROWS)
    assert Counter(event_ids(records)) == Counter({event_id: 2 for event_id in expected})
