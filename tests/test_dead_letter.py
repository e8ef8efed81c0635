"""The dead-letter topic (``OUTBOX_DEAD_LETTER_TOPIC``) against the real broker and database."""

from __future__ import annotations

import io
import logging
import struct

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connections
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from django_outbox import kafka, publish_event
from django_outbox.consumer import dead_letter
from django_outbox.consumer.dead_letter import DeadLetters
from django_outbox.consumer.outcomes import Outcome, Result
from django_outbox.consumer.records import Delivery
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import RejectedRecord
from django_outbox.ops import metrics
from django_outbox.topics import dead_letter_topic, implied_topics

from .consumer_support import (
    BROKEN,
    COUNTER,
    broken_handler,
    committed_offsets,
    consume,
    foreign_record,
    registered,
    send_raw,
    send_rows,
    unique_group,
)
from .kafka_fixtures import create_topic, delete_topic, read_topic, unique_topic_name
from .relay_support import closed_port


class Refused(Exception):
    """A handler's own exception: its qualified name goes into the copy."""


@pytest.fixture
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_DEAD_LETTER_TOPIC = "{topic}.DLT"
    yield settings
    delete_topic(kafka_bootstrap, f"{kafka_topic}.DLT")


def metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def header(record, name):
    values = [value for key, value in record.headers if key == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def number(record, name):
    value = header(record, name)
    return struct.unpack(">i" if len(value) == 4 else ">q", value)[0]


def copies(bootstrap, topic, count):
    found = read_topic(bootstrap, f"{topic}.DLT", count)
    assert len(found) == count
    return sorted(found, key=lambda r: number(r, dead_letter.ORIGINAL_OFFSET))


# ------------------------------------------------------------------ copies on the real broker


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_rejected_records_are_copied_with_their_bytes_and_spring_headers(
    kafka_bootstrap, kafka_topic
):
    unknown = foreign_record("nobody.handles.this", {"a": 1}, key="u")
    sent = [
        (b"\x00\xffkey", b"\xff\xfe not JSON", [("event_id", b"x"), ("event_type", b"y")]),
        unknown,
        (None, b"no headers, no envelope", [("trace", b"\x00\x01")]),
    ]
    send_raw(kafka_bootstrap, kafka_topic, sent)
    group = unique_group()
    with registered(COUNTER, lambda event: None):
        consumer = consume(kafka_topic, group)

    assert consumer.stats.outcomes == {"rejected": 2, "skipped": 1}
    assert consumer.dead_letters.counts == {"sent": 3}
    # The database is the source of truth: every record is there as well.
    stored = RejectedRecord.objects.filter(consumer_group=group).order_by("offset")
    assert [r.reason for r in stored] == ["malformed", "unknown_event_type", "missing_headers"]
    originals = read_topic(kafka_bootstrap, kafka_topic, 3)
    found = copies(kafka_bootstrap, kafka_topic, 3)
    for (key, value, headers), original, copy in zip(sent, originals, found, strict=True):
        assert (copy.key, copy.value) == (key, value)
        assert copy.headers[: len(headers)] == headers  # the original ones, first
        assert header(copy, dead_letter.ORIGINAL_TOPIC) == kafka_topic.encode()
        assert number(copy, dead_letter.ORIGINAL_PARTITION) == 0
        assert number(copy, dead_letter.ORIGINAL_OFFSET) == original.offset
        assert number(copy, dead_letter.ORIGINAL_TIMESTAMP) == original.timestamp
        assert header(copy, dead_letter.ORIGINAL_TIMESTAMP_TYPE) == b"CreateTime"
        assert header(copy, dead_letter.ORIGINAL_CONSUMER_GROUP) == group.encode()
        assert number(copy, dead_letter.ATTEMPTS) == 1
    assert [header(c, dead_letter.REASON) for c in found] == [
        b"malformed",
        b"unknown_event_type",
        b"missing_headers",
    ]
    assert [header(c, dead_letter.EXCEPTION_FQCN) for c in found] == [
        b"django_outbox.exceptions.MalformedEvent",
        b"django_outbox.exceptions.UnknownEventType",
        b"django_outbox.exceptions.MalformedEvent",
    ]
    messages = [header(c, dead_letter.EXCEPTION_MESSAGE).decode() for c in found]
    assert [m == r.error for m, r in zip(messages, stored, strict=True)] == [True] * 3
    assert "nobody.handles.this" in messages[1]
    assert committed_offsets(kafka_topic, group)[0] == 3


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_given_up_inbox_event_carries_its_exception_and_attempts(kafka_bootstrap, kafka_topic):
    def refuses(event):
        try:
            {}["missing"]
        except KeyError as exc:
            raise Refused(f"cannot take {event.event_id}") from exc

    record = foreign_record(COUNTER, {"n": 1}, key="order-7")
    send_raw(kafka_bootstrap, kafka_topic, [record])
    group = unique_group()
    with registered(COUNTER, refuses):
        consumer = consume(kafka_topic, group, inbox_attempts=2, inbox_retry_max_delay=0.05)

    assert consumer.stats.outcomes == {"failed": 1}
    stored = RejectedRecord.objects.get(consumer_group=group)
    assert (stored.reason, stored.attempts) == ("handler_failed", 2)
    (copy,) = copies(kafka_bootstrap, kafka_topic, 1)
    assert (copy.key, copy.value) == (record[0], record[1])
    assert header(copy, dead_letter.EXCEPTION_FQCN) == b"tests.test_dead_letter.Refused"
    assert header(copy, dead_letter.EXCEPTION_CAUSE_FQCN) == b"builtins.KeyError"
    event_id = header(copy, "event_id").decode()
    assert header(copy, dead_letter.EXCEPTION_MESSAGE).decode() == f"cannot take {event_id}"
    trace = header(copy, dead_letter.EXCEPTION_STACKTRACE).decode()
    assert "in refuses" in trace and trace.rstrip().endswith(f"Refused: cannot take {event_id}")
    assert number(copy, dead_letter.ATTEMPTS) == 2
    assert header(copy, dead_letter.REASON) == b"handler_failed"


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_an_outbox_row_is_copied_once_it_is_dead_not_before(kafka_bootstrap, kafka_topic):
    group = unique_group()
    with registered(BROKEN, broken_handler):
        row = publish_event(BROKEN, {"x": 1}, key="k", max_retry=2)
        send_rows(kafka_bootstrap, kafka_topic, [row])
        first = consume(kafka_topic, group)
        assert first.stats.outcomes == {"retry": 1}
        assert first.dead_letters.counts == {}  # a retry is no giving up
        send_rows(kafka_bootstrap, kafka_topic, [row])  # as the relay does, once due
        second = consume(kafka_topic, group)
    assert second.stats.outcomes == {"dead": 1}
    row.refresh_from_db()
    assert (row.status, row.retry_count) == (Status.DEAD, 2)
    (copy,) = copies(kafka_bootstrap, kafka_topic, 1)
    assert copy.value == row.payload.encode()
    assert header(copy, "outbox_id") == str(row.pk).encode()
    assert number(copy, dead_letter.ORIGINAL_OFFSET) == 1
    assert number(copy, dead_letter.ATTEMPTS) == 2
    assert header(copy, dead_letter.REASON) == b"dead"
    assert header(copy, dead_letter.EXCEPTION_FQCN) == b"builtins.RuntimeError"
    assert b"broken handler refuses" in header(copy, dead_letter.EXCEPTION_MESSAGE)


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_copies_are_sent_after_the_outcome_is_committed(kafka_bootstrap, kafka_topic, monkeypatch):
    real, seen = kafka.send_records, []

    def spy(producer, records, timeout):
        # No transaction open across the Kafka call, and the outcome is already visible.
        seen.append(
            (
                any(c.in_atomic_block for c in connections.all(initialized_only=True)),
                RejectedRecord.objects.filter(topic=kafka_topic).count(),
            )
        )
        return real(producer, records, timeout)

    monkeypatch.setattr(kafka, "send_records", spy)
    send_raw(kafka_bootstrap, kafka_topic, [(b"k", b"\xff", [])] * 2)
    consumer = consume(kafka_topic, unique_group())
    assert consumer.dead_letters.counts == {"sent": 2}
    assert seen == [(False, 2)]  # one send for the poll's copies


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_off_by_default_nothing_is_copied(settings, kafka_bootstrap, kafka_topic):
    del settings.OUTBOX_DEAD_LETTER_TOPIC
    assert dead_letter_topic(kafka_topic, "g") is None
    send_raw(kafka_bootstrap, kafka_topic, [(b"k", b"\xff", [])])
    consumer = consume(kafka_topic, unique_group())
    assert consumer.stats.outcomes == {"rejected": 1}
    assert consumer.dead_letters.counts == {}
    with kafka.admin_client() as admin:
        assert not kafka.describe_topics(admin, [f"{kafka_topic}.DLT"])[0].exists


# ------------------------------------------------------------------ a dead-letter topic that fails


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_topic_the_broker_refuses_loses_nothing_and_the_consumer_goes_on(
    kafka_bootstrap, kafka_topic, caplog
):
    # The dead-letter topic exists, and takes no record bigger than 64 bytes.
    dlt = f"{kafka_topic}.DLT"
    with kafka.admin_client() as admin:
        kafka.create_topics(admin, [dlt], 1, 1, {"max.message.bytes": "64"})
    caplog.set_level(logging.INFO, logger="django_outbox")
    rows = [publish_event(COUNTER, {"n": n}, key="k") for n in range(2)]
    send_raw(kafka_bootstrap, kafka_topic, [(b"k", b"\xff" * 10, [])] * 3, partition=0)
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    group = unique_group()
    with registered(COUNTER, lambda event: None):
        consumer = consume(kafka_topic, group, owning_group=group)

    assert consumer.stats.outcomes == {"rejected": 3, "handled": 2}
    assert consumer.dead_letters.counts == {"failed": 3}
    assert RejectedRecord.objects.filter(consumer_group=group).count() == 3
    assert {r.status for r in OutboxMessage.objects.filter(pk__in=[r.pk for r in rows])} == {
        Status.CONSUMED
    }
    assert committed_offsets(kafka_topic, group)[0] == 5
    logged = [r for r in caplog.records if "dead-letter cop" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "3 dead-letter copies to topic" in logged[0].getMessage()
    assert "MessageSizeTooLargeError" in logged[0].getMessage()
    assert "nothing is lost" in logged[0].getMessage()


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_name_kafka_refuses_is_a_failed_copy_not_a_crash(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_DEAD_LETTER_TOPIC = "{topic}.{group}"
    send_raw(kafka_bootstrap, kafka_topic, [(b"k", b"\xff", [])] * 2)
    group = f"dead letters {unique_group()}"  # a space: no topic may have this name
    consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"rejected": 2}
    assert consumer.dead_letters.counts == {"failed": 2}
    assert RejectedRecord.objects.filter(consumer_group=group).count() == 2
    assert committed_offsets(kafka_topic, group)[0] == 2


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_no_broker_for_the_copies_pauses_the_topic_and_logs_once(settings, caplog):
    settings.OUTBOX_KAFKA_PRODUCER = {
        "bootstrap_servers": [f"127.0.0.1:{closed_port()}"],
        "bootstrap_timeout_ms": 500,
    }
    caplog.set_level(logging.INFO, logger="django_outbox")
    name = "django_outbox_dead_letter_copies_total"
    before = {o: metric(name, outcome=o) for o in ("failed", "skipped")}
    letters = DeadLetters("g", suspend_seconds=3600)
    rejected = Result(Outcome.REJECTED, "not an envelope", "malformed")
    metrics.enable()
    try:
        for offset in range(3):
            letters.add(Delivery("orders", 0, offset, b"k", b"v"), rejected)
            letters.flush()
    finally:
        metrics.disable()
        letters.close()
    assert letters.counts == {"failed": 1, "skipped": 2}
    assert metric(name, outcome="failed") - before["failed"] == 1
    assert metric(name, outcome="skipped") - before["skipped"] == 2
    logged = [r.getMessage() for r in caplog.records if "dead-letter" in r.getMessage()]
    assert len(logged) == 1
    assert "topic 'orders.DLT' failed" in logged[0]
    assert "skipped for 3600 s" in logged[0]


@pytest.mark.django_db
def test_a_dead_letter_topic_the_consumer_reads_is_refused_at_run_time(settings, caplog):
    settings.OUTBOX_DEAD_LETTER_TOPIC = "everything"
    letters = DeadLetters("g", ["orders", "everything"])
    letters.add(Delivery("orders", 0, 0, b"k", b"v"), Result(Outcome.REJECTED, "bad", "malformed"))
    letters.flush()
    assert letters.counts == {"failed": 1}
    assert "'everything' is a topic this consumer reads" in caplog.text


# ------------------------------------------------------------------ headers, any input


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    key=st.none() | st.binary(max_size=64),
    value=st.none() | st.binary(max_size=64),
    headers=st.lists(
        st.tuples(
            st.text(max_size=20) | st.sampled_from(sorted(dead_letter.HEADERS)),
            st.none() | st.binary(max_size=20),
        )
    ),
    error=st.text(max_size=20_000),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    timestamp=st.none() | st.integers(-1, 2**62),
)
def test_headers_for_any_record_and_error(key, value, headers, error, partition, offset, timestamp):
    delivery = Delivery("t", partition, offset, key, value, tuple(headers), timestamp, 1)
    failure = Refused(error)
    for result in (
        Result(Outcome.REJECTED, error, "malformed"),
        Result(Outcome.FAILED, error, "handler_failed", failure, attempts=3),
    ):
        built = dead_letter.headers(delivery, result, "g")
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in built)
        found = dict(built)
        assert struct.unpack(">i", found[dead_letter.ORIGINAL_PARTITION]) == (partition,)
        assert struct.unpack(">q", found[dead_letter.ORIGINAL_OFFSET]) == (offset,)
        assert (dead_letter.ORIGINAL_TIMESTAMP in found) == (
            timestamp is not None and timestamp >= 0
        )
        for name in (dead_letter.EXCEPTION_MESSAGE, dead_letter.EXCEPTION_STACKTRACE):
            if name in found:
                assert len(found[name]) <= dead_letter.MAX_TEXT_BYTES
                found[name].decode("utf-8")
        # Earlier dead-letter headers are replaced, the others kept in order.
        kept = [(k, v or b"") for k, v in headers if k not in dead_letter.HEADERS]
        assert built[: len(kept)] == kept


# ------------------------------------------------------------------ the check, outbox_topics


@pytest.mark.parametrize(
    ("pattern", "check_id"),
    [
        ("{topic}.DLT", None),
        ("{topic}-{group}-dlt", None),
        ("dead-letters", None),
        ("{topic}.{env}", "django_outbox.E070"),
        ("{topic!r}.DLT", "django_outbox.E070"),
        ("{topic:>9}.DLT", "django_outbox.E070"),
        ("{topic.DLT", "django_outbox.E070"),
        ("{topic} DLT", "django_outbox.E070"),
        ("", "django_outbox.E070"),
        (5, "django_outbox.E070"),
        ("chat-events", "django_outbox.E071"),
        ("{topic}", "django_outbox.E071"),
    ],
)
def test_the_check(settings, pattern, check_id):
    settings.OUTBOX_DEFAULT_TOPIC = "chat-events"
    settings.OUTBOX_DEAD_LETTER_TOPIC = pattern
    messages = [m for m in run_checks(tags=["django_outbox"]) if m.id]
    assert {m.id for m in messages} == ({check_id} if check_id else set())
    for message in messages:
        assert "OUTBOX_DEAD_LETTER_TOPIC" in message.msg and message.hint


def test_the_check_renders_the_group_too(settings):
    settings.OUTBOX_DEFAULT_TOPIC = "chat-events"
    settings.OUTBOX_CONSUMER_GROUP = "billing service"
    settings.OUTBOX_DEAD_LETTER_TOPIC = "{topic}.{group}.DLT"
    (message,) = [m for m in run_checks(tags=["django_outbox"]) if m.id]
    assert message.id == "django_outbox.E070"
    assert "'billing service'" in message.msg


def test_implied_topics_name_the_dead_letter_topics(settings):
    settings.OUTBOX_DEFAULT_TOPIC = "chat-events"
    settings.OUTBOX_TOPICS = {"billing.paid": "billing"}
    settings.OUTBOX_CONSUMER_GROUP = "svc"
    assert implied_topics() == ["billing", "chat-events"]
    settings.OUTBOX_DEAD_LETTER_TOPIC = "{topic}.{group}.DLT"
    assert implied_topics() == ["billing", "billing.svc.DLT", "chat-events", "chat-events.svc.DLT"]


@pytest.mark.kafka
def test_outbox_topics_creates_the_dead_letter_topics(settings, kafka_bootstrap):
    topic = unique_topic_name("dlt-create")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = topic
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEAD_LETTER_TOPIC = "{topic}.DLT"
    create_topic(kafka_bootstrap, topic, partitions=2)
    out = io.StringIO()
    try:
        call_command(
            "outbox_topics",
            "--create",
            "--partitions",
            "2",
            "--replication-factor",
            "1",
            stdout=out,
            stderr=io.StringIO(),
        )
        assert f"created {topic}.DLT" in out.getvalue()
        with kafka.admin_client() as admin:
            (info,) = kafka.describe_topics(admin, [f"{topic}.DLT"])
        assert info.partitions == 2
    finally:
        delete_topic(kafka_bootstrap, topic)
        delete_topic(kafka_bootstrap, f"{topic}.DLT")


@pytest.mark.usefixtures("outbox_config")
@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_record_the_client_cannot_decode_is_copied_without_its_bytes(
    kafka_bootstrap, kafka_topic, monkeypatch
):
    with KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="snappy") as producer:
        producer.send(kafka_topic, key=b"k", value=b"v" * 1000, partition=0).get(timeout=30)
    import kafka.codec

    monkeypatch.setattr(kafka.codec, "has_snappy", lambda: False)  # as without python-snappy
    group = unique_group()
    consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"rejected": 1}
    assert RejectedRecord.objects.get(consumer_group=group).offset == 0
    (copy,) = copies(kafka_bootstrap, kafka_topic, 1)
    assert (copy.key, copy.value) == (None, b"")  # the client could not read them
    assert header(copy, dead_letter.EXCEPTION_FQCN) == b"kafka.errors.UnsupportedCodecError"
    assert b"kafka-python cannot read this record" in header(copy, dead_letter.EXCEPTION_MESSAGE)
    assert number(copy, dead_letter.ORIGINAL_OFFSET) == 0
