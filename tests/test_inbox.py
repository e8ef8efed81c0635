"""The inbox and rejected-record tables: constraints, encodings, retention."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from django_outbox.models import pruning
from django_outbox.models.inbox import InboxEntry, RejectedRecord, encode_bytes, encode_headers

pytestmark = pytest.mark.django_db


def entry(group="g", event_id=None, **fields):
    return InboxEntry.objects.create(
        consumer_group=group,
        event_id=event_id or uuid.uuid4(),
        event_type="x.y",
        topic="t",
        partition=0,
        offset=fields.pop("offset", 0),
        **fields,
    )


def test_one_entry_per_group_and_event():
    event_id = uuid.uuid4()
    entry(event_id=event_id)
    entry(group="other-group", event_id=event_id)
    with pytest.raises(IntegrityError), transaction.atomic():
        entry(event_id=event_id)


def test_one_rejected_record_per_group_and_offset():
    fields = dict(consumer_group="g", reason="malformed", topic="t", partition=1, offset=5)
    RejectedRecord.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        RejectedRecord.objects.create(**fields)


def test_encodings_round_trip():
    (key, value), encoding = encode_bytes(b"k", "héllo".encode())
    assert (key, value, encoding) == ("k", "héllo", "utf-8")
    (key, value), encoding = encode_bytes(b"k", b"\xff\x00")
    assert encoding == "base64"
    record = RejectedRecord(key=key, value=value, encoding=encoding)
    assert record.raw_value == b"\xff\x00" and record.raw_key == b"k"
    assert RejectedRecord(key=None, value=None).raw_value is None
    assert encode_headers([("a", b"1"), ("b", b"\xff"), ("c", None)]) == [
        {"name": "a", "value": "1"},
        {"name": "b", "base64": "/w=="},
        {"name": "c", "value": None},
    ]


def age(queryset, field, days):
    queryset.update(**{field: timezone.now() - datetime.timedelta(days=days)})


def test_prune_deletes_old_rows_in_chunks(monkeypatch):
    monkeypatch.setattr(pruning, "PRUNE_CHUNK", 2)
    old = [entry(offset=i) for i in range(5)]
    recent = entry(offset=9)
    age(InboxEntry.objects.filter(pk__in=[e.pk for e in old]), "handled_at", 40)
    assert InboxEntry.objects.prune(30) == 5
    assert list(InboxEntry.objects.all()) == [recent]
    assert InboxEntry.objects.prune(30) == 0


def test_prune_command(capsys):
    entry()
    RejectedRecord.objects.create(
        consumer_group="g", reason="malformed", topic="t", partition=0, offset=1
    )
    age(InboxEntry.objects.all(), "handled_at", 10)
    age(RejectedRecord.objects.all(), "created_at", 10)
    entry()
    call_command("outbox_consume", "--prune", "7")
    assert InboxEntry.objects.count() == 1
    assert RejectedRecord.objects.count() == 0
    with pytest.raises(CommandError, match="negative"):
        call_command("outbox_consume", "--prune", "-1")


def test_max_messages_must_be_positive():
    with pytest.raises(CommandError, match="--max-messages"):
        call_command("outbox_consume", "--max-messages", "0", "--topic", "t")


def test_no_topic_is_a_command_error(settings):
    settings.OUTBOX_DEFAULT_TOPIC = None
    settings.OUTBOX_TOPICS = {}
    with pytest.raises(CommandError, match="no topic"):
        call_command("outbox_consume")
