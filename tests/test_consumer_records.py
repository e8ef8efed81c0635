"""Records the consumer may meet: any bytes, any UUID spelling, no headers (no broker)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_outbox import Event, publish_event
from django_outbox.consumer import Consumer, Delivery, Handling, Outcome
from django_outbox.consumer.inbox import inbox_key
from django_outbox.consumer.records import Rejected, parse, replay_mark
from django_outbox.kafka import record_headers
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from testproject.chat.models import Conversation

from .consumer_support import COUNTER, count_handler, foreign_record, registered

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = b'{"event_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
ID_HEADERS = [("event_id", str(uuid.uuid4()).encode()), ("event_type", b"x.y")]


@pytest.fixture(autouse=True)
def no_fast_path(settings):
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_CONSUMER_GROUP = "g"  # Handling("g") owns the outbox rows


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"k", b'{"a": "\x00"}', ID_HEADERS),
        (b"k", b"\x00\x00\x00\x00\x01binary Avro", ID_HEADERS),  # Confluent framing
        (b"k", b'{"a": 1}', [*ID_HEADERS, ("trace", b"\x00\x01\xff")]),
        (b"k", b'{"a": 1}', [*ID_HEADERS, ("tr\x00ce", b"1")]),
        (b"k", b'{"a": 1}', [*ID_HEADERS, ("lone \udc80", b"1")]),
        (b"\xff\x00", b"\xc3\x28 invalid UTF-8", []),
        (b"k", DEEP, ID_HEADERS),
        (None, b"x" * (5 * 1024 * 1024), ID_HEADERS),
        (b"k\x00", None, [("event_type\x00", None)]),
    ],
    ids=[
        "nul-in-value",
        "binary-value",
        "binary-header",
        "nul-in-header-name",
        "surrogate-in-header-name",
        "invalid-utf8",
        "deep-json",
        "huge",
        "nul-key-tombstone",
    ],
)
def test_any_bytes_are_stored_as_a_rejected_record(key, value, headers):
    delivery = Delivery("t", 0, 3, key, value, tuple(headers))
    result = Handling("g").handle(delivery)
    assert result.outcome is Outcome.REJECTED
    record = RejectedRecord.objects.get()
    assert (record.topic, record.partition, record.offset) == ("t", 0, 3)
    if value is not None and len(value) <= 4 * 1024 * 1024:
        assert record.raw_value == value
        assert record.raw_key == key
    elif value is not None:
        assert record.raw_value == value[: len(record.raw_value)]
        assert "only its first" in record.error
    assert len(record.headers) == len(headers)


def test_deeply_nested_json_is_malformed_not_an_exception():
    result = parse(Delivery("t", 0, 0, b"k", DEEP, tuple(ID_HEADERS)))
    assert isinstance(result, Rejected)
    assert result.reason == "malformed"


@pytest.mark.parametrize(
    "spell",
    [str.upper, lambda s: "{" + s + "}", lambda s: "urn:uuid:" + s, lambda s: s.replace("-", "")],
    ids=["upper-case", "braces", "urn", "undashed"],
)
def test_event_ids_in_another_uuid_spelling_agree_with_the_envelope(spell):
    conversation = Conversation.objects.create(title="spelling")
    key, value, headers = foreign_record(COUNTER, {"conversation_id": conversation.pk})
    event = Event.from_json(value)
    headers = [("event_id", spell(str(event.event_id)).encode()), headers[1]]
    with registered(COUNTER, count_handler):
        result = Handling("g").handle(Delivery("t", 0, 0, key, value, tuple(headers)))
        assert result.outcome is Outcome.HANDLED, result.error
        # The envelope spelled so too, the header canonical: the same event, a repeat.
        spelled = value.replace(str(event.event_id).encode(), spell(str(event.event_id)).encode())
        headers = [("event_id", str(event.event_id).encode()), headers[1]]
        again = Handling("g").handle(Delivery("t", 0, 1, key, spelled, tuple(headers)))
        assert again.outcome is Outcome.DUPLICATE, again.error
    conversation.refresh_from_db()
    assert conversation.message_count == 1


def test_a_headerless_record_of_a_local_row_is_handled_on_that_row_once():
    conversation = Conversation.objects.create(title="headerless")
    row = publish_event(COUNTER, {"conversation_id": conversation.pk})
    handling = Handling("g")
    headerless = Delivery(row.topic, 0, 0, row.message_key.encode(), row.payload.encode(), ())
    with_headers = Delivery(
        row.topic,
        0,
        1,
        row.message_key.encode(),
        row.payload.encode(),
        tuple(record_headers(row, "default")),
    )
    with registered(COUNTER, count_handler):
        assert handling.handle(headerless).outcome is Outcome.HANDLED
        assert handling.handle(with_headers).outcome is Outcome.DUPLICATE
        assert handling.handle(headerless).outcome is Outcome.DUPLICATE
    row.refresh_from_db()
    assert row.status == Status.CONSUMED
    assert InboxEntry.objects.count() == 0
    conversation.refresh_from_db()
    assert conversation.message_count == 1


def test_a_headerless_foreign_event_goes_through_the_inbox_once():
    conversation = Conversation.objects.create(title="headerless foreign")
    key, value, _headers = foreign_record(COUNTER, {"conversation_id": conversation.pk})
    with registered(COUNTER, count_handler):
        for offset, outcome in [(0, Outcome.HANDLED), (1, Outcome.DUPLICATE)]:
            assert Handling("g").handle(Delivery("t", 0, offset, key, value)).outcome is outcome
    assert InboxEntry.objects.count() == 1
    conversation.refresh_from_db()
    assert conversation.message_count == 1


header_names = st.one_of(
    st.sampled_from(["event_id", "event_type", "outbox_id", "outbox_db"]), st.text(max_size=12)
)
header_values = st.one_of(st.none(), st.binary(max_size=40), st.just(b"default"), st.just(b"1"))
values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.builds(
        lambda e: e.to_bytes(),
        st.builds(
            Event,
            event_type=st.sampled_from([COUNTER, "nobody.x"]),
            data=st.just({}),
            key=st.text(max_size=5),
        ),
    ),
    st.just(DEEP),
)
records = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.one_of(st.none(), st.binary(max_size=20)),
        values,
        st.lists(st.tuples(header_names, header_values), max_size=5),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,  # each example writes to the database
        HealthCheck.data_too_large,
    ],
)
@given(records=records)
def test_any_records_end_handled_or_rejected_and_their_offsets_are_committed(records):
    """Property: whatever the bytes, the record-handling path never raises, every record
    gets an outcome, and the offsets to commit reach past the last record of each partition."""
    consumer = Consumer(["t"], group="g", database_retry_delay=0.01)
    offsets: dict[int, int] = {}
    deliveries = []
    for partition, key, value, headers in records:
        offsets[partition] = offsets.get(partition, -1) + 1
        deliveries.append(Delivery("t", partition, offsets[partition], key, value, tuple(headers)))
    with registered(COUNTER, lambda event: None):
        consumer.handle_records(deliveries)
    assert consumer.stats.records == len(deliveries)
    assert set(consumer.stats.outcomes) <= {o.value for o in Outcome} - {"retry_in_place"}
    committed = {tp.partition: offset for tp, offset in consumer.offsets.uncommitted.items()}
    assert committed == {p: last + 1 for p, last in offsets.items()}
    RejectedRecord.objects.all().delete()
    InboxEntry.objects.all().delete()
    OutboxMessage.objects.all().delete()


def test_replay_headers_name_the_run_and_the_group():
    event = Event(event_type=COUNTER, data={}, key="k")

    def delivery(*headers):
        return Delivery("t", 0, 0, b"k", event.to_bytes(), headers=headers)

    plain = delivery()
    assert replay_mark(plain) is None and inbox_key(plain, event) == event.event_id
    for_g = delivery(("outbox_replay_run", b"r1"), ("outbox_replay_group", b"g"))
    assert replay_mark(for_g).is_for("g") and not replay_mark(for_g).is_for("h")
    every = delivery(("outbox_replay_run", b"r1"), ("outbox_replay_group", b"*"))
    assert replay_mark(every).is_for("h")
    nobody = delivery(("outbox_replay_run", b"r1"))  # no group: never every group by accident
    assert not replay_mark(nobody).is_for("g")
    # Once per event and run: the same run keys the same, another run anew.
    assert inbox_key(for_g, event) == inbox_key(every, event) != event.event_id
    again = delivery(("outbox_replay_run", b"r2"), ("outbox_replay_group", b"g"))
    assert inbox_key(again, event) != inbox_key(for_g, event)


def test_a_replay_for_another_group_runs_no_handler(settings):
    settings.OUTBOX_WAKE_RELAY = False
    conversation = Conversation.objects.create(title="replay")
    event = Event(event_type=COUNTER, data={"conversation_id": conversation.pk}, key="k")
    headers = (("outbox_replay_run", b"r1"), ("outbox_replay_group", b"other"))
    with registered(COUNTER, count_handler):
        result = Handling("g").handle(Delivery("t", 0, 0, b"k", event.to_bytes(), headers))
        assert result.outcome is Outcome.SKIPPED and "'other' only" in result.error
        result = Handling("other").handle(Delivery("t", 0, 1, b"k", event.to_bytes(), headers))
        assert result.outcome is Outcome.HANDLED
        result = Handling("other").handle(Delivery("t", 0, 2, b"k", event.to_bytes(), headers))
        assert result.outcome is Outcome.DUPLICATE
    conversation.refresh_from_db()
    assert conversation.message_count == 1
