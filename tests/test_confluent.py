"""The relay on librdkafka (``OUTBOX_KAFKA_CLIENT = "confluent"``), against the real broker.

The poison-row tests of test_delivery.py run on both clients.

The records are read back with kafka-python's consumer: the transport changes, the
records do not.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from django.core.checks import run_checks

from django_outbox import kafka
from django_outbox.envelope import HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import (
    IGNORE_LEAKED_SOCKETS,
    closed_port,
    make_rows,
    silent_port,
    wait_for,
)


@pytest.fixture
def confluent_settings(relay_settings):
    relay_settings.OUTBOX_KAFKA_CLIENT = "confluent"
    return relay_settings


# ------------------------------------------------------------------ settings and checks


def _check_ids() -> list[str]:
    return [m.id for m in run_checks() if m.id and m.id.startswith("django_outbox.E08")]


def test_default_client_is_kafka_python_and_passes_the_check(settings):
    assert kafka.kafka_client() == "kafka-python"
    assert _check_ids() == []


def test_unknown_client_is_an_error(settings):
    settings.OUTBOX_KAFKA_CLIENT = "librdkafka"
    assert _check_ids() == ["django_outbox.E080"]


def test_confluent_without_the_package_is_an_error(settings, monkeypatch):
    settings.OUTBOX_KAFKA_CLIENT = "confluent"
    assert _check_ids() == []  # installed (the dev extra has it)
    monkeypatch.setattr(kafka, "confluent_available", lambda: False)
    assert _check_ids() == ["django_outbox.E080"]


def test_confluent_names_options_it_cannot_translate(settings):
    settings.OUTBOX_KAFKA_CLIENT = "confluent"
    settings.OUTBOX_KAFKA_PRODUCER = {"linger_ms": 20, "partitioner": object()}
    settings.OUTBOX_CONFLUENT_OPTIONS = "compression.type=lz4"
    messages = [m for m in run_checks() if m.id == "django_outbox.E081"]
    assert len(messages) == 2
    assert any("partitioner" in m.msg for m in messages)
    with pytest.raises(ValueError, match="partitioner"):
        kafka.confluent_config()


def test_confluent_options_that_weaken_delivery_are_a_warning(settings):
    settings.OUTBOX_KAFKA_CLIENT = "confluent"
    assert not [m for m in run_checks() if m.id == "django_outbox.W080"]
    settings.OUTBOX_CONFLUENT_OPTIONS = {"acks": 1}
    assert [m.id for m in run_checks() if m.id == "django_outbox.W080"] == ["django_outbox.W080"]


def test_confluent_config_translates_the_defaults_and_takes_overrides(settings):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = ["127.0.0.1:1", "127.0.0.1:2"]
    settings.OUTBOX_KAFKA_PRODUCER = {"compression_type": "gzip", "max_block_ms": 1}
    settings.OUTBOX_CONFLUENT_OPTIONS = {"linger.ms": 20}
    config = kafka.confluent_config(client_id="probe")
    assert config == {
        "bootstrap.servers": "127.0.0.1:1,127.0.0.1:2",
        "acks": -1,
        "enable.idempotence": True,
        "linger.ms": 20,
        "client.id": "probe",
        "request.timeout.ms": 10_000,
        "delivery.timeout.ms": 30_000,
        "batch.size": 256 * 1024,
        "compression.type": "gzip",
        "max.in.flight.requests.per.connection": 5,
    }


def test_librdkafka_errors_map_to_the_same_outcomes():
    too_large = kafka.confluent_error("MSG_SIZE_TOO_LARGE", 10, "too large", False, False)
    assert kafka.is_poison(too_large) and "MessageSizeTooLarge" in type(too_large).__name__
    local = kafka.confluent_error("_MSG_SIZE_TOO_LARGE", -186, "too large", False, False)
    assert kafka.is_poison(local)
    denied = kafka.confluent_error("TOPIC_AUTHORIZATION_FAILED", 29, "denied", False, False)
    assert not kafka.is_poison(denied) and not kafka.is_transport_error(denied)  # definite
    for name, code in (("_MSG_TIMED_OUT", -192), ("_TRANSPORT", -195), ("_ALL_BROKERS_DOWN", -187)):
        unknown = kafka.confluent_error(name, code, "gone", True, False)
        assert kafka.is_transport_error(unknown) and not kafka.is_poison(unknown), name
    leader = kafka.confluent_error("NOT_LEADER_FOR_PARTITION", 6, "moved", True, False)
    assert kafka.is_transport_error(leader)
    fatal = kafka.confluent_error("_FATAL", -150, "fenced", False, True)
    assert not kafka.is_poison(fatal) and not kafka.is_transport_error(fatal)


# ------------------------------------------------------------------ against the broker


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_burst_delivers_every_row_with_headers_keys_and_key_order(
    confluent_settings, kafka_bootstrap
):
    topic = confluent_settings.OUTBOX_DEFAULT_TOPIC
    rows = make_rows(1200, topic, keys=[f"k{i}" for i in range(7)], size=300)
    relay = Relay(burst=True, batch_size=250)
    relay.run()
    assert OutboxMessage.objects.published().count() == 1200
    records = read_topic(kafka_bootstrap, topic, expected_count=1200)
    assert len(records) == 1200
    by_id = {row.pk: row for row in OutboxMessage.objects.all()}
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        headers = dict(record.headers)
        row = by_id[int(headers[HEADER_OUTBOX_ID])]
        assert record.value == row.payload.encode()
        assert record.key == row.message_key.encode()
        assert headers["event_type"] == b"test.happened"
        assert headers["trace"].startswith(b"t")  # the envelope's own headers
        per_key[record.key].append(row.pk)
    assert {r.pk for r in rows} == set(by_id)
    for key, ids in per_key.items():
        assert ids == sorted(ids), key  # key order kept, partition by partition


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_dead_broker_leaves_rows_pending_without_spending_retries(
    confluent_settings, kafka_bootstrap
):
    topic = confluent_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(12, topic)
    confluent_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    Relay(burst=True, batch_size=5).run()
    rows = list(OutboxMessage.objects.order_by("id"))
    assert {row.status for row in rows} == {Status.PENDING}
    assert [row.retry_count for row in rows] == [0] * 12
    assert not OutboxMessage.objects.in_flight().exists()

    confluent_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    wait_for(lambda: OutboxMessage.objects.due().count() == 12, 5, "the rows to be due")
    Relay(burst=True).run()
    assert OutboxMessage.objects.published().count() == 12


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_broker_that_never_answers_leaves_rows_pending_without_spending_retries(
    confluent_settings,
):
    """librdkafka's own timeout (_MSG_TIMED_OUT) is of unknown fate: no attempt counted."""
    topic = confluent_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(6, topic)
    with silent_port() as port:
        confluent_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{port}"
        Relay(burst=True, batch_size=10).run()
    rows = list(OutboxMessage.objects.order_by("id"))
    assert {row.status for row in rows} == {Status.PENDING}
    assert [row.retry_count for row in rows] == [0] * 6
    assert all(row.last_error for row in rows)
    assert not OutboxMessage.objects.in_flight().exists()


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_full_local_queue_is_waited_out_in_key_order(confluent_settings, kafka_bootstrap):
    """A queue of 5 records (BufferError on the sixth): served and retried, order kept."""
    confluent_settings.OUTBOX_CONFLUENT_OPTIONS = {"queue.buffering.max.messages": 5}
    topic = confluent_settings.OUTBOX_DEFAULT_TOPIC
    rows = make_rows(200, topic, keys=["a", "b"])
    Relay(burst=True, batch_size=100).run()
    assert OutboxMessage.objects.published().count() == 200
    records = read_topic(kafka_bootstrap, topic, expected_count=200)
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        per_key[record.key].append(int(dict(record.headers)[HEADER_OUTBOX_ID]))
    assert sorted(per_key[b"a"] + per_key[b"b"]) == sorted(r.pk for r in rows)
    assert all(ids == sorted(ids) for ids in per_key.values())


def test_records_past_the_deadline_are_not_sent(confluent_settings):
    producer = kafka.build_relay_producer()
    try:
        records = [kafka.OutboxRecord("t", b"k", b"v", []) for _ in range(3)]
        sending = kafka.send_batch(producer, records, 0)
        assert not sending.futures
        assert all(isinstance(o, kafka.NotSent) for o in sending.outcomes)
        assert kafka.await_acks(producer, sending) == sending.outcomes
    finally:
        kafka.close_producer(producer)


class _CountingLookups:
    """The librdkafka producer, with its ``list_topics`` calls written down."""

    def __init__(self, producer):
        self._producer = producer
        self.lookups: list[tuple[str, float]] = []

    def list_topics(self, topic=None, timeout=-1):
        self.lookups.append((topic, timeout))
        return self._producer.list_topics(topic, timeout=timeout)

    def __getattr__(self, name):
        return getattr(self._producer, name)


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_the_producer_asks_for_a_topics_partitions_once_before_its_first_record(
    confluent_settings, kafka_bootstrap
):
    """Without it, librdkafka held a new topic's first records about half a second."""
    first = confluent_settings.OUTBOX_DEFAULT_TOPIC
    second = f"{first}-other"
    producer = kafka.build_relay_producer()
    counting = producer._producer = _CountingLookups(producer._producer)
    try:
        records = [kafka.OutboxRecord(t, b"k", b"v", []) for t in (first, second, first)]
        for batch in (records, records[:1]):
            sending = kafka.send_batch(producer, batch, 10)
            assert kafka.await_acks(producer, sending) == [None] * len(batch)
        assert sorted(topic for topic, _ in counting.lookups) == sorted([first, second])
        assert all(0 < wait <= 2.0 for _, wait in counting.lookups)
    finally:
        kafka.close_producer(producer)


@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_topic_lookup_against_a_dead_broker_waits_no_longer_than_the_batch_may(
    confluent_settings,
):
    confluent_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    producer = kafka.build_relay_producer()
    counting = producer._producer = _CountingLookups(producer._producer)
    try:
        records = [kafka.OutboxRecord("t", b"k", b"v", []) for _ in range(2)]
        sending = kafka.send_batch(producer, records, 0.3)
        outcomes = kafka.await_acks(producer, sending)
        assert [topic for topic, _ in counting.lookups] == ["t"]
        assert 0 < counting.lookups[0][1] <= 0.3
        assert all(outcome is not None for outcome in outcomes)  # no ack assumed
    finally:
        kafka.close_producer(producer, timeout=0)
