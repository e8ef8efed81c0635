"""The delivery core against the real broker: per-row outcomes, no crash loop, key order.

Each test here reproduces one way the first landing lost, killed or reordered rows
(issue "Delivery you can bet on"); they fail on that code and pass on the delivery core.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict

import pytest
from django.db import OperationalError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.envelope import HEADER_OUTBOX_ID, Event
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.claiming import claim
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import delete_topic, read_topic, topic_record_count, unique_topic_name

from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    leaked_sockets_collected,
    make_rows,
    run_in_thread,
    wait_for,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]


@pytest.fixture(autouse=True)
def _leaked_sockets():
    with leaked_sockets_collected():
        yield


def limited_topic(bootstrap: str, limit: int, partitions: int = 1) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = unique_topic_name(f"limit{limit}")
    config = {"max.message.bytes": str(limit)}
    with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
        admin.wait_for_topics([topic], timeout_ms=30000)
    return topic


def delivered_ids(bootstrap: str, topic: str, count: int) -> list[int]:
    records = read_topic(bootstrap, topic, expected_count=count)
    return [int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records]


# ----------------------------------------------------------------- innocent rows live


def test_one_broker_rejected_row_kills_only_itself(
    relay_settings, kafka_bootstrap, producer_client
):
    """One 5 KB row on a 2,000-byte topic, then 300 normal rows, in one batch: 1 dead."""
    topic = limited_topic(kafka_bootstrap, 2000)
    try:
        (bad,) = make_rows(1, topic, size=5_000)
        good = make_rows(300, topic, size=100)
        Relay(burst=True, batch_size=500).run()
        bad.refresh_from_db()
        assert bad.status == Status.DEAD and "MessageSizeTooLarge" in (bad.last_error or "")
        assert OutboxMessage.objects.published().count() == 300
        assert set(delivered_ids(kafka_bootstrap, topic, 300)) == {r.pk for r in good}
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_a_batch_larger_than_the_topic_limit_is_delivered_not_crashed(
    relay_settings, kafka_bootstrap, producer_client
):
    """31 rows of ~330 bytes on a 3,000-byte topic: kafka-python splits, flush() raises."""
    topic = limited_topic(kafka_bootstrap, 3000)
    try:
        rows = make_rows(31, topic, keys=["same"], size=150)
        relay_settings.OUTBOX_KAFKA_PRODUCER = {**FAST_FAIL_PRODUCER, "linger_ms": 100}
        Relay(burst=True, batch_size=100).run()  # must not raise
        assert not OutboxMessage.objects.dead().exists()
        wait_for(lambda: OutboxMessage.objects.due().count() == 0, 10, "the retries to be due")
        Relay(burst=True, batch_size=100).run()
        assert OutboxMessage.objects.published().count() == 31
        assert set(delivered_ids(kafka_bootstrap, topic, 31)) == {r.pk for r in rows}
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_after_a_poison_row_the_next_batches_still_go(
    relay_settings, kafka_bootstrap, producer_client
):
    """A producer that met a broker rejection is replaced, never trusted again."""
    topic = limited_topic(kafka_bootstrap, 2000)
    try:
        make_rows(1, topic, size=5_000)
        Relay(burst=True).run()
        later = make_rows(20, topic)
        Relay(burst=True, batch_size=5).run()
        assert OutboxMessage.objects.dead().count() == 1
        assert set(delivered_ids(kafka_bootstrap, topic, 20)) == {r.pk for r in later}
    finally:
        delete_topic(kafka_bootstrap, topic)


# ----------------------------------------------------------------- payloads of any kind


def _raw_row(topic: str, payload: str, key: str = "k") -> OutboxMessage:
    return OutboxMessage.objects.create(
        event_type="test.raw", topic=topic, message_key=key, payload=payload
    )


def _nested(depth: int) -> str:
    return '{"data":' + "[" * depth + "]" * depth + ',"event_id":"x"}'


@pytest.mark.parametrize(
    "payload, fate",
    [
        # A lone surrogate escape: valid JSON, no UTF-8 encoding (headers, event_id).
        ('{"event_id":"\\ud800","event_type":"test.raw","data":{}}', Status.DEAD),
        ('{"event_type":"test.raw","headers":{"trace":"\\udfff"},"data":{}}', Status.DEAD),
        # Nested deeper than Python's json can read, keys in another order (Go's).
        (_nested(100_000), Status.PUBLISHED),
    ],
    ids=["surrogate-event-id", "surrogate-header", "deeply-nested"],
)
def test_payloads_that_broke_record_building_end_with_a_recorded_state(
    relay_settings, kafka_bootstrap, payload, fate
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    bad = _raw_row(topic, payload)
    good = make_rows(5, topic)
    Relay(burst=True).run()  # must not raise: no crash loop on the next start
    bad.refresh_from_db()
    assert bad.status == fate
    if fate == Status.DEAD:
        assert "cannot build the Kafka record" in (bad.last_error or "")
    assert not OutboxMessage.objects.in_flight().exists()  # nothing left leased
    expected = len(good) + (fate == Status.PUBLISHED)
    assert OutboxMessage.objects.published().count() == expected


def test_upper_case_event_ids_travel_in_canonical_spelling(relay_settings, kafka_bootstrap):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    event = Event(event_type="test.raw", data={}, key="k")
    document = json.loads(event.to_json())
    document["event_id"] = str(event.event_id).upper()
    _raw_row(topic, json.dumps(document, sort_keys=True))  # Go's sorted-map order
    Relay(burst=True).run()
    (record,) = read_topic(kafka_bootstrap, topic, expected_count=1)
    assert dict(record.headers)["event_id"].decode() == str(event.event_id)


# ----------------------------------------------------------------- the database blinks


def test_an_acknowledged_batch_is_written_back_on_a_fresh_connection(
    relay_settings, kafka_bootstrap, monkeypatch, caplog, producer_client
):
    from django_outbox.relay import write_back as delivery

    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    rows = make_rows(10, topic)
    real = delivery.record_published
    calls = []

    def blinking(batch, ids, now=None, **kwargs):
        calls.append(len(ids))
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(batch, ids, now, **kwargs)

    monkeypatch.setattr(delivery, "record_published", blinking)
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        Relay(burst=True).run()
    assert calls == [10, 10]
    assert OutboxMessage.objects.published().count() == 10
    assert "retrying on a fresh connection" in caplog.text
    # Written back, not sent again after the lease.
    assert topic_record_count(kafka_bootstrap, topic) == len(rows)


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_one_database_down_does_not_slow_the_others(relay_settings, monkeypatch):
    from django_outbox.relay import claims as relay_module

    real = relay_module.claim
    claims: dict[str, int] = defaultdict(int)

    def other_is_down(alias, *args, **kwargs):
        claims[alias] += 1
        if alias == "other":
            raise OperationalError("other is down")
        return real(alias, *args, **kwargs)

    monkeypatch.setattr(relay_module, "claim", other_is_down)
    relay = Relay(databases=["default", "other"], interval=0.05)
    thread = run_in_thread(relay)
    try:
        wait_for(lambda: claims["other"] >= 3, 30, "three failures of 'other'")
        before = claims["default"]
        make_rows(3, relay_settings.OUTBOX_DEFAULT_TOPIC)
        wait_for(lambda: OutboxMessage.objects.published().count() == 3, 3, "'default' rows")
        threading.Event().wait(2)
        # The first landing paused every database after each failure (growing to 30 s):
        # 'default' was claimed once per pause. Now it keeps its own pace.
        assert claims["default"] - before >= 5
    finally:
        relay.stop()
        thread.join(30)
    assert not thread.is_alive()


# ----------------------------------------------------------------- key order


def test_same_key_events_reach_kafka_in_id_order_from_many_publishers(
    relay_settings, kafka_bootstrap, producer_client
):
    """Events of one key, each published after the previous one committed, by four
    threads in turn (four web processes serving one conversation), while the relay
    runs woken by the commits: Kafka has them in id order, per key."""
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    relay = Relay(interval=0.5)
    thread = run_in_thread(relay)
    turn = threading.Condition()
    state = {"next": 0}
    total, writers = 80, 4

    def writer(me: int) -> None:
        from django.db import connections

        try:
            for n in range(me, total, writers):
                with turn:
                    turn.wait_for(lambda n=n: state["next"] == n, timeout=30)
                with transaction.atomic():
                    publish_event("chat.said", {"n": n}, key=f"conversation-{n % 2}")
                with turn:
                    state["next"] += 1
                    turn.notify_all()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_for(lambda: OutboxMessage.objects.published().count() == total, 30, "deliveries")
    finally:
        relay.stop()
        thread.join(30)
    records = read_topic(kafka_bootstrap, topic, expected_count=total)
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_key[record.key].append(int(dict(record.headers)[HEADER_OUTBOX_ID]))
    assert len(per_key) == 2
    for ids in per_key.values():
        assert ids == sorted(ids)


# ----------------------------------------------------------------- states and locks


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "America/St_Johns"])
def test_in_flight_does_not_depend_on_the_time_zone(relay_settings, zone):
    make_rows(3, relay_settings.OUTBOX_DEFAULT_TOPIC)
    batch = claim("default", 2, 30)
    with override_settings(TIME_ZONE=zone):
        now = timezone.now()
        assert OutboxMessage.objects.in_flight(now).count() == 2
        assert OutboxMessage.objects.backing_off(now).count() == 0
        # The admin's actions leave rows a relay holds alone.
        assert OutboxMessage.objects.give_up_now(now) == 1
    assert set(OutboxMessage.objects.in_flight().values_list("pk", flat=True)) == {
        row.id for row in batch.rows
    }


def test_write_backs_lock_rows_in_id_order(relay_settings, django_assert_max_num_queries):
    from django.test.utils import CaptureQueriesContext

    make_rows(5, relay_settings.OUTBOX_DEFAULT_TOPIC)
    batch = claim("default", 5, 30)
    ids = [row.id for row in reversed(batch.rows)]
    with CaptureQueriesContext(connection) as queries:
        assert OutboxMessage.objects.mark_published(batch.fence, ids, timezone.now()) == 5
    sqls = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":
        (sql,) = sqls
        assert "ORDER BY" in sql and "FOR UPDATE)" in sql
    elif connection.vendor == "mysql":
        (lock,) = [sql for sql in sqls if sql.startswith("SELECT")]
        assert "ORDER BY" in lock and lock.endswith("FOR UPDATE")


def test_a_burst_names_the_rows_another_relay_still_holds(relay_settings, caplog):
    make_rows(3, relay_settings.OUTBOX_DEFAULT_TOPIC)
    claim("default", 2, 300)  # a relay that took two rows and died
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        relay = Relay(burst=True)
        relay.run()
    assert relay.delivered == 1
    assert "2 row(s) on 'default' are leased by another relay" in caplog.text
