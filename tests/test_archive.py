"""The archive of ``outbox_prune --archive``: every row written and synced before it goes,
any payload and key round-trip, a bad line is named."""

from __future__ import annotations

import datetime
import gzip
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from django_outbox.history import archive as archive_module
from django_outbox.history.archive import ArchiveError, decode_line, encode_row, read_archive
from django_outbox.history.selection import Selection
from django_outbox.models import OutboxMessage, Status, pruning

from .relay_support import make_rows

pytestmark = pytest.mark.django_db


def aged(rows, status=Status.CONSUMED, days=40):
    when = timezone.now() - datetime.timedelta(days=days)
    OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
        status=status, created_at=when, updated_at=when
    )
    return list(OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).order_by("pk"))


@pytest.mark.parametrize("name", ["outbox.jsonl", "outbox.jsonl.gz"])
def test_prune_archive_keeps_every_deleted_row(tmp_path, monkeypatch, name):
    monkeypatch.setattr(pruning, "PRUNE_CHUNK", 2)
    old = aged(make_rows(5, "t"))
    young = aged(make_rows(2, "t"), days=1)
    path = tmp_path / name
    call_command("outbox_prune", "--days", "30", "--archive", str(path), stdout=io.StringIO())
    kept = read_archive(path)
    assert [row.id for row in kept] == [row.pk for row in old]
    assert [row.payload for row in kept] == [row.payload for row in old]
    assert kept[0].created_at == old[0].created_at and kept[0].status == Status.CONSUMED
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {r.pk for r in young}
    # A second run appends (a gzip file gets a second member).
    aged(young)
    call_command("outbox_prune", "--days", "30", "--archive", str(path), stdout=io.StringIO())
    assert [row.line for row in read_archive(path)] == list(range(1, 8))
    assert OutboxMessage.objects.count() == 0


def test_nothing_is_deleted_that_was_not_written(tmp_path, monkeypatch):
    old = aged(make_rows(3, "t"))

    def full_disk(self, rows, alias):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive_module.Archive, "keep", full_disk)
    with pytest.raises(OSError, match="No space"):
        call_command("outbox_prune", "--days", "30", "--archive", str(tmp_path / "a.jsonl"))
    assert OutboxMessage.objects.count() == len(old)


def test_dry_run_writes_no_archive(tmp_path):
    aged(make_rows(2, "t"))
    path = tmp_path / "a.jsonl"
    call_command("outbox_prune", "--days", "30", "--archive", str(path), "--dry-run")
    assert not path.exists() and OutboxMessage.objects.count() == 2


def test_an_archive_that_cannot_be_opened_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="cannot open the archive"):
        call_command("outbox_prune", "--days", "1", "--archive", str(tmp_path / "no" / "a.jsonl"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("{", "line 2: not JSON"),
        ("[1]", "line 2: not a JSON object"),
        ('{"v": 2}', "line 2: format version 2"),
        ("", "line 2: not JSON"),
    ],
)
def test_a_bad_line_is_named(tmp_path, line, message):
    good = encode_row(aged(make_rows(1, "t"))[0], "default")
    path = tmp_path / "a.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(ArchiveError, match=message):
        read_archive(path)


def test_a_truncated_gzip_archive_is_an_error(tmp_path):
    good = encode_row(aged(make_rows(1, "t"))[0], "default")
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(f"{good}\n{good}\n".encode())[:-12])
    with pytest.raises(ArchiveError, match="cannot be read after line"):
        read_archive(path)


def test_archived_rows_match_the_filters_as_the_table_does():
    rows = aged(make_rows(3, "t"))
    archived = [decode_line(encode_row(row, "default"), n) for n, row in enumerate(rows, 1)]
    for selection in (
        Selection(keys=(rows[1].message_key,)),
        Selection(ids=(rows[0].pk, rows[2].pk)),
        Selection(until=rows[0].created_at),
        Selection(since=rows[0].created_at, statuses=(Status.CONSUMED,)),
        Selection(statuses=(Status.DEAD,)),
    ):
        in_table = set(selection.queryset("default").values_list("pk", flat=True))
        assert {row.id for row in archived if selection.matches(row)} == in_table


ANY_TEXT = st.characters(exclude_categories=())  # lone surrogates and NUL too


@settings(max_examples=200, deadline=None)
@given(
    payload=st.text(ANY_TEXT),
    key=st.text(ANY_TEXT, max_size=128),
    event_type=st.text(ANY_TEXT, max_size=64),
)
def test_any_payload_and_key_round_trip(payload, key, event_type):
    row = OutboxMessage(
        pk=7,
        event_type=event_type,
        topic="t",
        message_key=key,
        payload=payload,
        status=Status.DEAD,
        created_at=timezone.now(),
    )
    line = encode_row(row, "default")
    assert "\n" not in line and line.isascii()
    back = decode_line(line, 1)
    assert (back.payload, back.message_key, back.event_type) == (payload, key, event_type)
    assert back.created_at == row.created_at and back.status == Status.DEAD
