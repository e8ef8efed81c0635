"""The on_commit fast path: delivery from the committing process, bounded in time."""

from __future__ import annotations

import logging
import time

import pytest
from django.db import transaction

from django_outbox import fastpath, publish_event
from django_outbox.claiming import claim
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    closed_port,
    event_ids,
    leaked_sockets_collected,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]


@pytest.fixture(autouse=True)
def fast_path_settings(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_FAST_PATH = True
    settings.OUTBOX_FAST_PATH_TIMEOUT = 5.0
    fastpath.reset_producer()
    with leaked_sockets_collected():
        yield settings
        fastpath.reset_producer()


def test_a_committed_event_reaches_kafka_without_a_relay(kafka_bootstrap, kafka_topic):
    with transaction.atomic():
        first = publish_event("order.placed", {"n": 1}, key="k")
        second = publish_event("order.placed", {"n": 2}, key="k")
        assert OutboxMessage.objects.published().count() == 0  # not before the commit
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [r.status for r in rows] == [Status.PUBLISHED] * 2
    assert all(r.published_at and r.next_retry_at is None for r in rows)
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=2)
    assert event_ids(records) == [str(first.event.event_id), str(second.event.event_id)]
    assert records[0].value == first.payload.encode()


def test_a_rolled_back_event_never_does(kafka_bootstrap, kafka_topic):
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
    assert OutboxMessage.objects.count() == 1
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=2, timeout=5)
    assert event_ids(records) == [str(kept.event.event_id)]


def test_kafka_unreachable_costs_the_commit_a_bounded_time(fast_path_settings, caplog):
    fast_path_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    fast_path_settings.OUTBOX_FAST_PATH_TIMEOUT = 1.0
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        with transaction.atomic():
            row = publish_event("order.placed", {"n": 1})
    first_cost = time.monotonic() - started
    # Bounded by ~2 x OUTBOX_FAST_PATH_TIMEOUT (see docs/relay.rst), not by
    # kafka-python's 30-120 s defaults.
    assert first_cost < 5, first_cost
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


def test_rows_a_relay_holds_are_left_alone(fast_path_settings):
    fast_path_settings.OUTBOX_FAST_PATH = False
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    fast_path_settings.OUTBOX_FAST_PATH = True
    held = claim("default", 10, 30)  # a relay got there between the commit and the fast path
    fastpath.deliver_after_commit("default", [row.pk])
    row.refresh_from_db()
    assert (row.status, row.next_retry_at) == (Status.PENDING, held.lease)


def test_a_poison_row_goes_dead_in_the_fast_path(fast_path_settings):
    fast_path_settings.OUTBOX_KAFKA_PRODUCER = {"max_request_size": 10_000}
    with transaction.atomic():
        big = publish_event("order.placed", {"pad": "x" * 20_000})
        small = publish_event("order.placed", {"n": 1})
    big.refresh_from_db()
    small.refresh_from_db()
    assert big.status == Status.DEAD and "MessageSizeTooLarge" in big.last_error
    assert small.status == Status.PUBLISHED


def test_never_raises(caplog):
    with caplog.at_level(logging.ERROR, logger="django_outbox"):
        fastpath.deliver_after_commit("no-such-alias", [1])
    assert "fast path failed" in caplog.text


def test_off_switch(fast_path_settings):
    fast_path_settings.OUTBOX_FAST_PATH = False
    with transaction.atomic():
        row = publish_event("order.placed", {"n": 1})
    fastpath.deliver_after_commit("default", [row.pk])  # also honoured here
    row.refresh_from_db()
    assert row.status == Status.PENDING


def test_a_new_bootstrap_gets_a_new_producer(fast_path_settings):
    with transaction.atomic():
        publish_event("order.placed", {"n": 1})
    first = fastpath._state.producer
    assert first is not None
    fast_path_settings.OUTBOX_KAFKA_PRODUCER = {"retry_backoff_ms": 50}
    with transaction.atomic():
        publish_event("order.placed", {"n": 2})
    assert fastpath._state.producer is not first
    fastpath.reset_producer()
    assert fastpath._state.producer is None
    assert OutboxMessage.objects.published().count() == 2
