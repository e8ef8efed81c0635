"""The relay against the real broker and the test database (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from django_outbox import publish_event
from django_outbox.envelope import HEADER_EVENT_TYPE, HEADER_OUTBOX_DB, HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from django_outbox.relay.rounds import Rounds
from tests.kafka_fixtures import delete_topic, read_topic, unique_topic_name

from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    closed_port,
    event_ids,
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


def test_burst_delivers_every_event_once_with_key_and_headers(
    relay_settings, kafka_bootstrap, producer_client
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    published = []
    for index in range(30):
        with transaction.atomic():
            published.append(
                publish_event(
                    "order.placed",
                    {"n": index},
                    key=f"customer-{index % 4}",
                    headers={"trace_id": f"trace-{index}"},
                )
            )
    out = io.StringIO()
    call_command("outbox_relay", "--burst", "--batch-size", "7", stdout=out)

    records = read_topic(kafka_bootstrap, topic, expected_count=30, timeout=30)
    assert len(records) == 30
    by_id = {str(row.event.event_id): row for row in published}
    assert sorted(event_ids(records)) == sorted(by_id)
    for record in records:
        headers = dict(record.headers)
        row = by_id[headers["event_id"].decode()]
        assert record.key == row.message_key.encode()
        assert record.value == row.payload.encode()  # the envelope, unchanged
        assert headers[HEADER_EVENT_TYPE] == b"order.placed"
        assert headers[HEADER_OUTBOX_ID] == str(row.pk).encode()
        assert headers[HEADER_OUTBOX_DB] == b"default"
        assert headers["trace_id"] == json.loads(row.payload)["headers"]["trace_id"].encode()
    rows = OutboxMessage.objects.all()
    assert {row.status for row in rows} == {Status.PUBLISHED}
    assert all(row.published_at and row.next_retry_at is None for row in rows)
    assert all(row.updated_at >= row.created_at for row in rows)


def test_same_key_lands_in_one_partition_in_written_order(
    relay_settings, kafka_bootstrap, producer_client
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    rows = make_rows(60, topic, keys=["a", "b", "c"])
    Relay(burst=True, batch_size=25).run()

    records = read_topic(kafka_bootstrap, topic, expected_count=60)
    assert len(records) == 60
    written = {row.pk: index for index, row in enumerate(rows)}
    for key in (b"a", b"b", b"c"):
        same_key = [r for r in records if r.key == key]
        assert len({r.partition for r in same_key}) == 1
        ids = [int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in same_key]  # offset order
        assert ids == sorted(ids, key=written.__getitem__)


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_serves_several_databases(relay_settings, kafka_bootstrap):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(5, topic, using="default")
    make_rows(4, topic, using="other")
    call_command("outbox_relay", "--burst", "--database", "default", "--database", "other")

    records = read_topic(kafka_bootstrap, topic, expected_count=9)
    assert (
        sorted(dict(r.headers)[HEADER_OUTBOX_DB] for r in records)
        == [b"default"] * 5 + [b"other"] * 4
    )
    assert OutboxMessage.objects.using("other").published().count() == 4


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_only_the_databases_asked_for(relay_settings):
    make_rows(2, relay_settings.OUTBOX_DEFAULT_TOPIC, using="other")
    call_command("outbox_relay", "--burst")  # OUTBOX_DATABASES defaults to ["default"]
    assert OutboxMessage.objects.using("other").pending().count() == 2


def test_broker_down_rows_stay_pending_without_spending_retries_then_get_delivered(
    relay_settings, kafka_bootstrap, caplog
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(12, topic)
    down = f"127.0.0.1:{closed_port()}"
    relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = down

    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        Relay(burst=True, batch_size=5).run()  # must not raise

    rows = list(OutboxMessage.objects.order_by("id"))
    assert {row.status for row in rows} == {Status.PENDING}
    assert [row.retry_count for row in rows] == [0] * 12  # an outage spends no retries
    assert all("unreachable" in (r.last_error or "") for r in rows), [
        (r.id, (r.last_error or "")[:5]) for r in rows
    ]
    assert not OutboxMessage.objects.in_flight().exists()  # released, not leased
    assert f"broker {down} unreachable" in caplog.text  # named at once

    relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap  # the broker is back
    wait_for(lambda: OutboxMessage.objects.due().count() == 12, 5, "the rows to be due")
    Relay(burst=True).run()
    assert OutboxMessage.objects.published().count() == 12
    assert len(read_topic(kafka_bootstrap, topic, expected_count=12)) == 12


def test_running_relay_waits_out_the_broker_then_delivers(
    relay_settings, kafka_bootstrap, producer_client
):
    make_rows(3, relay_settings.OUTBOX_DEFAULT_TOPIC)
    relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    relay = Relay(interval=0.05)
    thread = run_in_thread(relay)
    try:
        wait_for(
            lambda: OutboxMessage.objects.filter(last_error__contains="unreachable").count() == 3,
            30,
            "a first attempt on every row",
        )
        assert thread.is_alive()
        relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
        wait_for(lambda: OutboxMessage.objects.published().count() == 3, 30, "the delivery")
    finally:
        relay.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert [r.retry_count for r in OutboxMessage.objects.all()] == [0] * 3


def test_unknown_fate_never_kills_a_row_out_of_retries(relay_settings, producer_client):
    make_rows(2, relay_settings.OUTBOX_DEFAULT_TOPIC, max_retry=0)
    relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    for _ in range(2):
        Relay(burst=True).run()
        wait_for(lambda: OutboxMessage.objects.due().count() == 2, 5, "the rows to be due")
    rows = list(OutboxMessage.objects.all())
    assert [r.status for r in rows] == [Status.PENDING] * 2


@pytest.fixture
def small_topic(kafka_bootstrap):
    """A topic whose broker-side limit rejects records over 2,000 bytes."""
    topic = unique_topic_name("small")
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    with KafkaAdminClient(bootstrap_servers=kafka_bootstrap) as admin:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
        admin.wait_for_topics([topic], timeout_ms=30000)
    yield topic
    delete_topic(kafka_bootstrap, topic)


@pytest.mark.parametrize(
    "poison",
    ["larger than max_request_size", "rejected by the broker", "invalid topic name"],
)
def test_a_poison_row_goes_dead_and_does_not_hold_the_others(
    relay_settings, kafka_bootstrap, small_topic, poison, producer_client
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    good = make_rows(3, topic, keys=["k"])
    if poison == "larger than max_request_size":
        relay_settings.OUTBOX_KAFKA_PRODUCER = {**FAST_FAIL_PRODUCER, "max_request_size": 50_000}
        (bad,) = make_rows(1, topic, keys=["k"], size=60_000)
    elif poison == "rejected by the broker":
        (bad,) = make_rows(1, small_topic, keys=["k"], size=5_000)
    else:
        (bad,) = make_rows(1, "not a valid topic!", keys=["k"])
    good += make_rows(3, topic, keys=["k"])

    Relay(burst=True).run()

    bad.refresh_from_db()
    assert bad.status == Status.DEAD  # at once: retrying cannot help (see docs/relay.rst)
    assert bad.retry_count == 1 and bad.next_retry_at is None
    assert bad.last_error
    assert OutboxMessage.objects.published().count() == 6
    records = read_topic(kafka_bootstrap, topic, expected_count=6)
    delivered = [int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records]
    # A broker-side rejection aborts the innocent records in flight too; the relay
    # sends those again, so they may come later (or twice), but none is lost.
    assert set(delivered) == {r.pk for r in good}
    if poison != "rejected by the broker":
        assert delivered == [r.pk for r in good]


def test_a_broker_rejection_does_not_kill_the_rows_in_flight_with_it(
    relay_settings, kafka_bootstrap, small_topic, producer_client
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    relay_settings.OUTBOX_KAFKA_PRODUCER = {**FAST_FAIL_PRODUCER, "linger_ms": 50}
    good = make_rows(30, topic)  # keys spread over every partition
    (bad,) = make_rows(1, small_topic, size=5_000)
    good += make_rows(30, topic)

    Relay(burst=True, batch_size=20).run()  # two batches in flight around the poison

    bad.refresh_from_db()
    assert bad.status == Status.DEAD
    assert "MessageSizeTooLarge" in (bad.last_error or "")
    assert set(OutboxMessage.objects.published().values_list("pk", flat=True)) == {
        r.pk for r in good
    }
    records = read_topic(kafka_bootstrap, topic, expected_count=len(good))
    assert {int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records} == {r.pk for r in good}


def test_a_failed_write_back_does_not_escape_run(relay_settings, monkeypatch, caplog):
    make_rows(2, relay_settings.OUTBOX_DEFAULT_TOPIC)

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("django_outbox.relay.claims.claim", broken)
    relay = Relay(burst=True)
    with caplog.at_level(logging.ERROR, logger="django_outbox"):
        relay.run()
    assert relay.errors == 1
    assert "database 'default' failed" in caplog.text
    with pytest.raises(CommandError, match="database error"):
        call_command("outbox_relay", "--burst")


def test_progress_line(relay_settings, caplog):
    make_rows(5, relay_settings.OUTBOX_DEFAULT_TOPIC)
    with caplog.at_level(logging.INFO, logger="django_outbox"):
        Relay(burst=True, batch_size=2, progress_interval=0).run()
    assert "rows/s delivered" in caplog.text and "pending" in caplog.text
    assert Relay().backlog() == (0, 0.0)


def test_command_logs_to_stdout_when_no_handler_is_configured(relay_settings):
    make_rows(1, relay_settings.OUTBOX_DEFAULT_TOPIC)
    out = io.StringIO()
    call_command("outbox_relay", "--burst", "--verbosity", "2", stdout=out)
    assert "outbox relay started" in out.getvalue()
    assert not logging.getLogger("django_outbox").handlers  # removed afterwards


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--interval", "-1"], "--interval"),
        (["--lease", "0"], "--lease"),
        (["--database", "nope"], "unknown database"),
    ],
)
def test_command_rejects_bad_options(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("outbox_relay", "--burst", *args)


def test_relay_rejects_an_unknown_alias():
    with pytest.raises(ValueError, match="unknown database"):
        Relay(databases=["nope"])


# --------------------------------------------------------------------------- pipelining


@pytest.mark.parametrize("shared_keys", [False, True], ids=["own-keys", "shared-keys"])
def test_at_most_two_batches_in_flight_and_no_transaction_around_kafka(
    relay_settings, kafka_bootstrap, monkeypatch, shared_keys
):
    from django.db import connection

    from django_outbox import kafka
    from django_outbox.relay import write_back as delivery

    keys = ["a", "b"] if shared_keys else None
    make_rows(20, relay_settings.OUTBOX_DEFAULT_TOPIC, keys=keys)
    log: list[tuple[str, int]] = []
    in_flight: list[object] = []
    send_batch, await_acks, record_published = (
        kafka.send_batch,
        kafka.await_acks,
        delivery.record_published,
    )

    def sending(producer, records, timeout):
        assert not connection.in_atomic_block  # never a transaction across Kafka
        handle = send_batch(producer, records, timeout)
        in_flight.append(handle)
        assert len(in_flight) <= 2
        log.append(("send", len(records)))
        return handle

    def awaiting(producer, handle, *, flush=True, cutoff=None):
        assert not connection.in_atomic_block
        outcomes = await_acks(producer, handle, flush=flush, cutoff=cutoff)
        in_flight.remove(handle)
        log.append(("acks", len(outcomes)))
        return outcomes

    def recording(batch, ids, now=None, **kwargs):
        # on the database thread, never the thread that talks to Kafka
        assert threading.current_thread() is not kafka_thread
        log.append(("published", len(ids)))
        return record_published(batch, ids, now, **kwargs)

    monkeypatch.setattr(kafka, "send_batch", sending)
    monkeypatch.setattr(kafka, "await_acks", awaiting)
    monkeypatch.setattr(delivery, "record_published", recording)
    kafka_thread = threading.current_thread()
    Relay(burst=True, batch_size=5).run()

    # Batch N+1 is sent before batch N's acks are awaited; N is recorded after its acks
    # (on the database thread, while the next batch goes to Kafka). Rows of a key that
    # is in N wait for N's acks (relay/keyorder.py): with two keys in every batch, one
    # batch is with Kafka at a time.
    kafka_work = [entry for entry in log if entry[0] != "published"]
    if shared_keys:
        assert kafka_work == [("send", 5)] + [("acks", 5), ("send", 5)] * 3 + [("acks", 5)]
    else:
        assert kafka_work == [("send", 5), ("send", 5)] + [("acks", 5), ("send", 5)] * 2 + [
            ("acks", 5),
            ("acks", 5),
        ]
    for position, entry in enumerate(log):
        if entry[0] == "published":
            recorded = log[: position + 1].count(entry)
            assert recorded <= log[:position].count(("acks", 5))
    assert log.count(("published", 5)) == 4
    assert OutboxMessage.objects.published().count() == 20
    assert len(read_topic(kafka_bootstrap, relay_settings.OUTBOX_DEFAULT_TOPIC, 20)) == 20


def test_stopping_records_the_batch_in_flight_and_leaves_the_rest_due(
    relay_settings, producer_client
):
    make_rows(10, relay_settings.OUTBOX_DEFAULT_TOPIC)
    relay = Relay(batch_size=5)
    handled = relay.run_once()  # sends the first batch, claims the next ahead; no acks yet
    assert handled == 5
    assert OutboxMessage.objects.published().count() == 0  # never before its ack is recorded
    wait_for(lambda: OutboxMessage.objects.in_flight().count() == 10, 10, "the claim ahead")

    relay.stop()
    relay.run()  # what is in flight gets recorded, the batch claimed ahead is given back

    assert OutboxMessage.objects.published().count() == 5
    assert OutboxMessage.objects.due().count() == 5
    assert not OutboxMessage.objects.in_flight().exists()
    assert relay.delivered == 5


# --------------------------------------------------------------------------- a trickle
# One commit at a time: a batch that took every due row is settled and recorded in the
# round that sent it, nothing is claimed ahead of it, and where commits notify the
# relay it waits for the next one instead of claiming again at once.


def test_a_batch_that_took_every_due_row_is_recorded_in_the_round_that_sent_it(
    relay_settings, producer_client, kafka_bootstrap
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    rows = make_rows(3, topic)
    relay = Relay(batch_size=5)
    try:
        assert relay.run_once() == 3
        # acked and written back before run_once returned: nothing left with Kafka,
        # nothing claimed ahead (it would have been empty)
        assert OutboxMessage.objects.published().count() == 3
        assert relay.delivered == 3
        assert not relay.claims.ahead
        assert relay.rounds.in_flight == []
        assert relay.rounds.caught_up
    finally:
        relay.stop()
        relay.run()
    records = read_topic(kafka_bootstrap, topic, 3)
    sent = sorted(int(dict(record.headers)[HEADER_OUTBOX_ID]) for record in records)
    assert sent == sorted(row.pk for row in rows)


def test_a_full_batch_still_claims_the_next_one_ahead(relay_settings, producer_client):
    make_rows(8, relay_settings.OUTBOX_DEFAULT_TOPIC)
    relay = Relay(batch_size=5)
    try:
        assert relay.run_once() == 5
        assert not relay.rounds.caught_up
        assert relay.rounds.in_flight
        assert list(relay.claims.ahead) == ["default"]
    finally:
        relay.stop()
        relay.run()
    assert OutboxMessage.objects.published().count() == 5
    assert OutboxMessage.objects.due().count() == 3


class _Listening:
    """What ``Rounds.look_again`` reads of a ``Wakeup``: the aliases notifications come from."""

    def __init__(self, *aliases: str) -> None:
        self.listening = set(aliases)


@pytest.mark.parametrize(
    "caught_up, listening, strict_order, again",
    [
        (True, ("default",), False, False),  # a commit since then wakes the relay
        (False, ("default",), False, True),  # a batch was full: more rows wait
        (True, (), False, True),  # no notification comes: look
        (True, ("default",), True, True),  # an outcome may have opened a held key
    ],
)
def test_the_relay_looks_again_at_once_only_when_no_commit_would_wake_it(
    settings, caught_up, listening, strict_order, again
):
    settings.OUTBOX_STRICT_ORDER = strict_order
    rounds = Rounds.__new__(Rounds)  # (the decision reads two attributes only)
    rounds.databases = ["default"]
    rounds.caught_up = caught_up
    assert rounds.look_again(_Listening(*listening)) is again


# --------------------------------------------------------------------------- record headers


def _parsed_headers(payload: str) -> list[tuple[str, bytes]]:
    """The headers when the payload is read with ``json.loads`` only."""
    from unittest import mock

    from django_outbox import kafka
    from django_outbox.kafka import records

    # outbox_headers calls _envelope_head inside kafka/records.py: patched there.
    with mock.patch.object(records, "_envelope_head", lambda payload: None):
        return kafka.outbox_headers(7, "t", payload, "default")


@pytest.mark.parametrize(
    "key, headers",
    [
        ("plain", {}),
        ('a "quoted" key \\ with "headers":{"x":"y"} inside', {"trace": 'é"\\'}),
        ("ключ", {"a": "1", "b": "2"}),
    ],
)
def test_canonical_envelopes_are_read_without_parsing_data(key, headers):
    from django_outbox import kafka
    from django_outbox.envelope import Event
    from django_outbox.kafka import records

    event = Event(
        "t", {"big": ["x" * 50] * 20, "nested": {"headers": {"no": "no"}}}, key, headers=headers
    )
    payload = event.to_json()
    head = (str(event.event_id), event.as_dict()["occurred_at"], headers)
    assert records._envelope_head(payload) == head
    assert kafka.outbox_headers(7, "t", payload, "default") == _parsed_headers(payload)
    # data itself is skipped unread (the consumer validates it):
    broken = payload[: payload.index(',"data":')] + ',"data":{not json'
    assert records._envelope_head(broken) == head


@pytest.mark.parametrize(
    "payload",
    [
        # The Go service: encoding/json of a struct, another key order.
        '{"data":{"n":1},"event_id":"3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f","event_type":"t",'
        '"headers":{"trace":"go"},"key":"k","occurred_at":"2026-01-01T00:00:00Z","version":1}',
        # Canonical order, but whitespace after the colons.
        '{"event_id": "3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f", "event_type": "t", "version": 1, '
        '"occurred_at": "2026-01-01T00:00:00Z", "key": "k", "headers": {"trace": "go"}, '
        '"data": {}}',
        # An upper-case UUID, and headers after data.
        '{"event_id":"3F1C2B9E-8D7A-4C6B-9E5F-1A2B3C4D5E6F","event_type":"t","version":1,'
        '"occurred_at":"2026-01-01T00:00:00Z","key":"k","data":{},"headers":{"trace":"go"}}',
    ],
)
def test_other_envelopes_fall_back_to_json(payload):
    from django_outbox import kafka
    from django_outbox.kafka import records

    assert records._envelope_head(payload) is None
    headers = dict(kafka.outbox_headers(7, "t", payload, "default"))
    assert headers["event_id"].decode().lower() == "3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f"
    assert headers["trace"] == b"go"
    assert headers["outbox_id"] == b"7"


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        '{"event_id":"3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f","event_type":"t"',  # truncated
        '{"event_id":"3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f","event_type":"t","version":1,'
        '"occurred_at":"x","key":"k","headers":{"a":1},"data":{}}',  # a non-string header
    ],
)
def test_malformed_envelopes_still_get_headers(payload):
    from django_outbox import kafka

    headers = kafka.outbox_headers(7, "t", payload, "default")
    assert headers == _parsed_headers(payload)
    assert [name for name, _ in headers] == ["event_id", "event_type", "outbox_id", "outbox_db"]
