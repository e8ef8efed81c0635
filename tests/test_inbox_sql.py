"""The inbox's statements on the consumer's hot path (``models/inbox_sql.py``), on the
database of the run: the rows they write are those ``bulk_create`` wrote."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_outbox.consumer.inbox import Duplicate, Inbox, replay_inbox_key
from django_outbox.consumer.records import Delivery
from django_outbox.envelope import HEADER_REPLAY_RUN, Event
from django_outbox.fields import truncate_to_millis
from django_outbox.models import inbox_sql
from django_outbox.models.inbox import InboxEntry

pytestmark = pytest.mark.django_db


def entries(count: int, **fields) -> list[inbox_sql.Entry]:
    return [
        inbox_sql.Entry(
            fields.get("event_id") or uuid.uuid4(),
            fields.get("event_type", "chat.message_sent"),
            fields.get("topic", "chat"),
            index % 3,
            1000 + index,
        )
        for index in range(count)
    ]


def stored(group: str) -> list[tuple]:
    return list(
        InboxEntry.objects.filter(consumer_group=group)
        .order_by("offset")
        .values_list("event_id", "event_type", "topic", "partition", "offset")
    )


def test_a_chunk_is_one_statement_and_every_column_is_written():
    now = timezone.now()
    written = entries(200)
    with CaptureQueriesContext(connection) as queries:
        inbox_sql.insert_entries("default", "g", written, now=now)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    # SQLite: its 999 parameters per statement take 142 entries of 7 columns
    assert len(inserts) == (2 if connection.vendor == "sqlite" else 1)
    assert stored("g") == [tuple(entry) for entry in written]
    handled_at = set(InboxEntry.objects.values_list("handled_at", flat=True))
    assert handled_at == {truncate_to_millis(now)}


def test_sqlite_batches_stay_under_its_parameter_limit():
    written = entries(1001)
    inbox_sql.insert_entries("default", "g", written)
    assert InboxEntry.objects.count() == 1001


def test_an_entry_there_already_is_an_integrity_error_and_nothing_of_the_chunk_stays():
    first = entries(3)
    inbox_sql.insert_entries("default", "g", first)
    again = entries(4) + [first[1]]
    with pytest.raises(IntegrityError), transaction.atomic():
        inbox_sql.insert_entries("default", "g", again)
    assert InboxEntry.objects.count() == 3
    inbox_sql.insert_entries("default", "other-group", again)  # the key is per group
    assert InboxEntry.objects.filter(consumer_group="other-group").count() == 5


def test_the_inbox_says_duplicate_and_keys_replays_per_run():
    event = Event("chat.message_sent", {"n": 1}, key="k")
    delivery = Delivery("chat", 0, 7, None, None)
    inbox = Inbox("g", "default")
    inbox.insert_many([(delivery, event)])
    with pytest.raises(Duplicate), transaction.atomic():
        inbox.insert_many([(delivery, event)])
    run = uuid.uuid4()
    replayed = Delivery("chat", 0, 8, None, None, headers=[(HEADER_REPLAY_RUN, str(run).encode())])
    inbox.insert_many([(replayed, event)])  # once more, for the replay run
    assert set(InboxEntry.objects.values_list("event_id", flat=True)) == {
        event.event_id,
        replay_inbox_key(event.event_id, str(run)),
    }


def test_handled_ids_finds_the_groups_own_entries_only():
    written = entries(5)
    inbox_sql.insert_entries("default", "g", written[:3])
    inbox_sql.insert_entries("default", "other-group", written[3:])
    asked = [entry.event_id for entry in written] + [uuid.uuid4()]
    assert inbox_sql.handled_ids("default", "g", asked) == {e.event_id for e in written[:3]}
    assert inbox_sql.handled_ids("default", "g", []) == set()
    assert all(isinstance(i, uuid.UUID) for i in inbox_sql.handled_ids("default", "g", asked))


text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    event_types=st.lists(text.map(lambda s: s[:64]), min_size=1, max_size=8),
    topic=text.map(lambda s: s[:255]),
    offset=st.integers(min_value=0, max_value=2**63 - 1),
    partition=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_any_text_and_numbers_round_trip_as_bulk_create_wrote_them(
    event_types, topic, offset, partition
):
    group = f"g-{uuid.uuid4().hex[:8]}"
    written = [
        inbox_sql.Entry(uuid.uuid4(), event_type, topic, partition, offset - index)
        for index, event_type in enumerate(event_types)
        if offset - index >= 0
    ]
    now = datetime.datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    with transaction.atomic():
        inbox_sql.insert_entries("default", group, written, now=now)
        rows = list(
            InboxEntry.objects.filter(consumer_group=group).values_list(
                "event_id", "event_type", "topic", "partition", "offset", "handled_at"
            )
        )
        transaction.set_rollback(True)
    assert sorted(rows) == sorted((*entry, truncate_to_millis(now)) for entry in written)
