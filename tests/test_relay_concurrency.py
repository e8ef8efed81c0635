"""Several relays at once over thousands of rows: no duplicate, none missing."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection

from django_outbox.models import OutboxMessage
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic, topic_record_count

from .relay_support import FAST_FAIL_PRODUCER, event_ids, make_rows, row_event_ids, run_in_thread

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROWS = 4000
RELAYS = 4


def test_concurrent_relays_deliver_each_row_once(settings, kafka_bootstrap, kafka_topic):
    if connection.vendor == "sqlite":
        pytest.skip(
            "SQLite has one writer at a time: concurrent relays serialise (and may meet "
            "'database is locked'); SKIP LOCKED concurrency is a PostgreSQL/MariaDB matter"
        )
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_WAKE_RELAY = False
    # The claim's own disjointness (SKIP LOCKED), without relay buckets: four burst
    # relays started at once would otherwise leave the first one every bucket
    # (tests/test_relay_buckets.py covers relays that share by key).
    settings.OUTBOX_RELAY_BUCKETS = False
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    make_rows(ROWS, kafka_topic, keys=[f"k{i}" for i in range(50)], size=100)

    relays = [Relay(burst=True, batch_size=50) for _ in range(RELAYS)]
    threads = [run_in_thread(relay) for relay in relays]
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)

    assert OutboxMessage.objects.published().count() == ROWS
    assert sum(relay.delivered for relay in relays) == ROWS
    assert all(relay.delivered for relay in relays)  # they really shared the work
    assert topic_record_count(kafka_bootstrap, kafka_topic) == ROWS
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=ROWS)
    seen = Counter(event_ids(records))
    assert len(records) == ROWS and max(seen.values()) == 1
    assert set(seen) == row_event_ids(OutboxMessage.objects.all())
