"""The admin for operators: failed attempts, failures by error, replays, history, CSS, i18n."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from django_outbox.admin.failures import error_group, group_failures
from django_outbox.consumer import replay
from django_outbox.envelope import Event
from django_outbox.kafka import record_headers
from django_outbox.models import OutboxMessage, Status, lease_expiry, retry_time
from django_outbox.models import attempts as attempts_module
from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.fencing import Fence, hold, new_token
from django_outbox.models.inbox import (
    RejectedRecord,
    RejectionReason,
    ReplayOutcome,
    decode_headers,
    encode_headers,
)
from tests.consumer_support import registered, unique_group
from tests.test_admin import (
    LIST_URL,
    client_for,
    detail_url,
    history,
    make,
    run_action,
    texts,
    user_with,
)

pytestmark = pytest.mark.django_db

PACKAGE = Path(__file__).resolve().parent.parent / "django_outbox"
FAILURES_URL = reverse("admin:django_outbox_outboxmessage_failures")
REJECTED_URL = reverse("admin:django_outbox_rejectedrecord_changelist")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "billing/events.py", line 12, in on_invoice_paid\n'
    "    raise ValueError(\"unknown currency 'XBT'\")\n"
    "ValueError: unknown currency 'XBT'"
)


def leased(count: int, **fields) -> tuple[Fence, list[OutboxMessage]]:
    """Rows leased by one claim: the lease in ``next_retry_at``, the claim's fence rows."""
    now = timezone.now()
    fence = Fence(lease_expiry(now, 60), new_token())
    rows = [make(next_retry_at=fence.lease, **fields) for _ in range(count)]
    hold(connection, [row.pk for row in rows], fence, now)
    return fence, rows


# --------------------------------------------------------------------------- failed attempts


def test_relay_back_off_and_give_up_write_one_attempt_per_row():
    lease, rows = leased(3)
    now = timezone.now()
    ids = [row.pk for row in rows]
    retry_at = retry_time(now, 5)
    written = OutboxMessage.objects.back_off(
        lease, ids[:2], retry_count=1, error="KafkaTimeoutError: no ack", retry_at=retry_at, now=now
    )
    assert written == 2
    assert OutboxMessage.objects.give_up(lease, ids[2:], retry_count=1, error="poison", now=now)
    found = {a.outbox_id: a for a in FailedAttempt.objects.all()}
    assert set(found) == set(ids)
    assert [found[pk].dead for pk in ids] == [False, False, True]
    for attempt in found.values():
        assert attempt.attempt == 1
        assert attempt.source == "relay"
        assert attempt.worker == attempts_module.worker_name()
        assert attempt.worker.endswith(f":{os.getpid()}")
    assert found[ids[0]].error == "KafkaTimeoutError: no ack"


def test_a_write_back_that_lost_its_lease_records_only_the_rows_it_changed():
    lease, rows = leased(3)
    OutboxMessage.objects.filter(pk=rows[1].pk).update(status=Status.CONSUMED)  # not ours now
    now = timezone.now()
    changed = OutboxMessage.objects.back_off(
        lease,
        [row.pk for row in rows],
        retry_count=4,
        error="boom",
        retry_at=retry_time(now, 5),
        now=now,
    )
    assert changed == 2
    assert set(FailedAttempt.objects.values_list("outbox_id", "attempt")) == {
        (rows[0].pk, 4),
        (rows[2].pk, 4),
    }


def test_nothing_is_written_on_success_or_release():
    lease, rows = leased(2)
    now = timezone.now()
    OutboxMessage.objects.mark_published(lease, [rows[0].pk], now)
    OutboxMessage.objects.release(lease, [rows[1].pk], now, error="away")
    assert not FailedAttempt.objects.exists()


def test_consumer_handler_failure_and_abandon_write_attempts():
    row = make(Status.PUBLISHED, max_retry=2)
    rows = OutboxMessage.objects
    now = timezone.now()
    with transaction.atomic():
        locked = rows.locked_for_handling([row.pk])[0]
        assert rows.handler_failed(locked, TRACEBACK, now, 1.0) is False
    with transaction.atomic():
        locked = rows.locked_for_handling([row.pk])[0]
        assert rows.handler_failed(locked, TRACEBACK, now, 1.0) is True
    other = make(Status.PUBLISHED)
    assert rows.abandon(other.pk, "consumer group 'g' rejected it: malformed") == 1
    assert rows.abandon(other.pk, "again") == 0  # dead already: no second attempt
    attempts = FailedAttempt.objects.order_by("id").values_list("outbox_id", "attempt", "dead")
    assert list(attempts) == [(row.pk, 1, False), (row.pk, 2, True), (other.pk, 1, True)]
    assert set(FailedAttempt.objects.values_list("source", flat=True)) == {"consumer"}


def test_outbox_prune_takes_the_attempts_with_the_rows():
    lease, rows = leased(1)
    now = timezone.now()
    OutboxMessage.objects.give_up(lease, [rows[0].pk], retry_count=1, error="x", now=now)
    old = now - datetime.timedelta(days=40)
    OutboxMessage.objects.filter(pk=rows[0].pk).update(updated_at=old)
    FailedAttempt.objects.update(failed_at=old)
    fresh = make()
    attempts_module.record(
        "default", [(fresh.pk, 1)], error="recent", source="relay", now=timezone.now()
    )
    out = io.StringIO()
    call_command("outbox_prune", "--days", "30", "--dead", stdout=out)
    assert "deleted 1 failed attempt(s)" in out.getvalue()
    assert list(FailedAttempt.objects.values_list("outbox_id", flat=True)) == [fresh.pk]


def test_detail_page_shows_the_attempts_times_with_seconds_and_zone(admin_client):
    lease, rows = leased(1)
    now = timezone.now()
    OutboxMessage.objects.give_up(lease, [rows[0].pk], retry_count=1, error="<b>bad</b>", now=now)
    html = admin_client.get(detail_url(rows[0].pk)).content.decode()
    assert 'class="outbox-attempts"' in html
    assert attempts_module.worker_name() in html
    assert "&lt;b&gt;bad&lt;/b&gt;" in html and "<b>bad</b>" not in html
    local = timezone.localtime(now)
    assert local.strftime("%Y-%m-%d %H:%M:%S.") in html
    assert f"{local.strftime('%H:%M:%S')}.{local.microsecond // 1000:03d} UTC" in html


def test_final_rows_show_no_next_retry(admin_client):
    now = timezone.now()
    stale = retry_time(now, 600)
    dead = make(Status.DEAD, next_retry_at=stale)
    consumed = make(Status.CONSUMED, next_retry_at=stale, consumed_at=now, published_at=now)
    pending = make(next_retry_at=stale)
    admin = admin_client.get(LIST_URL).context["cl"].model_admin
    assert admin.next_retry(dead) == "-" and admin.next_retry(consumed) == "-"
    assert admin.next_retry_text(dead) == "-"
    assert "<time" in admin.next_retry(pending)


# --------------------------------------------------------------------------- history


def test_release_key_is_in_the_history(admin_client):
    dead = make(Status.DEAD, retry_count=20, last_error="no")
    response = run_action(admin_client, "release_key", [dead])
    assert texts(response)[0][0] == "success"
    assert history(dead) == ["Key released (strict order)."]
    assert OutboxMessage.objects.get(pk=dead.pk).last_error == "no"


def test_no_action_writes_into_last_error():
    source = "".join(path.read_text() for path in (PACKAGE / "admin").glob("*.py"))
    assert "last_error=" not in source and "_with_note" not in source


# --------------------------------------------------------------------------- failures by error


@pytest.mark.parametrize(
    ("error", "group"),
    [
        ("KafkaTimeoutError: Batch expired\nmore", "KafkaTimeoutError: Batch expired"),
        (TRACEBACK, "ValueError: unknown currency 'XBT'"),
        ("", "-"),
        (None, "-"),
        ("x" * 500, "x" * 200),
    ],
)
def test_error_group(error, group):
    assert error_group(error, error) == group


@pytest.fixture
def failures() -> dict[str, list[OutboxMessage]]:
    now = timezone.now()
    timeout = "KafkaTimeoutError: Batch for TopicPartition expired"
    return {
        "timeout": [make(Status.DEAD, last_error=f"{timeout}\ndetails {n}") for n in range(3)]
        + [make(retry_count=2, next_retry_at=retry_time(now, 600), last_error=timeout)],
        "currency": [make(Status.DEAD, last_error=TRACEBACK) for _ in range(2)],
        # Same first line, but in flight or done: not a failure to group or retry.
        "others": [
            make(next_retry_at=lease_expiry(now, 600), last_error=timeout),
            make(Status.CONSUMED, last_error=timeout),
        ],
    }


def test_groups_count_only_failed_rows(failures):
    grouping = group_failures(OutboxMessage.objects.all())
    assert grouping.complete
    assert [(g.error, g.dead, g.backing_off) for g in grouping.groups] == [
        ("KafkaTimeoutError: Batch for TopicPartition expired", 3, 1),
        ("ValueError: unknown currency 'XBT'", 2, 0),
    ]
    picked = grouping.ids_of("ValueError: unknown currency 'XBT'")
    assert picked == sorted((r.pk for r in failures["currency"]), reverse=True)
    assert grouping.ids_of("no such error") == []
    assert group_failures(OutboxMessage.objects.all(), limit=3).rows == 3


def test_failures_page_filter_and_retry_all_in_a_group(admin_client, failures):
    page = admin_client.get(FAILURES_URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "KafkaTimeoutError: Batch for TopicPartition expired" in html
    assert "Retry all in this group" in html
    [(group, url)] = [item for item in page.context["groups"] if item[0].count == 4]
    listed = admin_client.get(url)
    assert {r.pk for r in listed.context["cl"].result_list} == {r.pk for r in failures["timeout"]}
    # The filter lists its groups when the list shows failed rows.
    choices = admin_client.get(LIST_URL, {"state": "dead"}).content.decode()
    assert "unknown currency" in choices

    response = admin_client.post(FAILURES_URL, {"group": group.error}, follow=True)
    assert texts(response) == [
        ("success", f"4 messages of the group “{group.error}” will be retried now.")
    ]
    for row in failures["timeout"]:
        fresh = OutboxMessage.objects.get(pk=row.pk)
        assert (fresh.status, fresh.retry_count) == (Status.PENDING, 0)
        assert history(row)[0].startswith("Retry requested")
    for row in failures["currency"] + failures["others"]:
        assert OutboxMessage.objects.get(pk=row.pk).status == row.status
    response = admin_client.post(FAILURES_URL, {"group": group.error}, follow=True)
    assert texts(response)[0][0] == "warning"


def test_retry_all_in_a_group_needs_the_retry_permission(failures):
    client = client_for(user_with("view_outboxmessage"))
    page = client.get(FAILURES_URL)
    assert page.status_code == 200 and "Retry all in this group" not in page.content.decode()
    group = "ValueError: unknown currency 'XBT'"
    assert client.post(FAILURES_URL, {"group": group}).status_code == 403
    assert OutboxMessage.objects.dead().count() == 5
    assert client_for(user_with(username="nobody")).get(FAILURES_URL).status_code == 403


# --------------------------------------------------------------------------- no handler, links


def test_a_row_without_a_handler_says_so(admin_client):
    row = make(Status.PUBLISHED, event_type="nobody.handles.this")
    listing = admin_client.get(LIST_URL).content.decode()
    assert "outbox-no-handler" in listing
    detail = admin_client.get(detail_url(row.pk)).content.decode()
    assert "No handler is registered for this event type in this project" in detail
    with registered("nobody.handles.this", lambda event: None):
        detail = admin_client.get(detail_url(row.pk)).content.decode()
        assert "registered in this project" in detail
        assert "outbox-no-handler" not in admin_client.get(LIST_URL).content.decode()


def rejected_copy(row: OutboxMessage, **fields) -> RejectedRecord:
    event = row.event
    defaults = {
        "consumer_group": fields.pop("consumer_group", unique_group()),
        "reason": RejectionReason.UNKNOWN_EVENT_TYPE,
        "error": "no handler",
        "topic": row.topic,
        "partition": 0,
        "offset": fields.pop("offset", 7),
        "key": row.message_key,
        "value": row.payload,
        "headers": encode_headers(record_headers(row, "default", dict(event.headers))),
        "event_id": event.event_id,
        "event_type": row.event_type,
    }
    return RejectedRecord.objects.create(**{**defaults, **fields})


def test_links_between_a_row_and_its_rejected_copies(admin_client):
    row = make(Status.PUBLISHED)
    record = rejected_copy(row)
    detail = admin_client.get(detail_url(row.pk)).content.decode()
    record_url = reverse("admin:django_outbox_rejectedrecord_change", args=[record.pk])
    assert record_url in detail
    assert f"{REJECTED_URL}?event_id={row.event.event_id}" in detail
    filtered = admin_client.get(REJECTED_URL, {"event_id": str(row.event.event_id)})
    assert [r.pk for r in filtered.context["cl"].result_list] == [record.pk]
    back = admin_client.get(record_url).content.decode()
    assert f'href="{detail_url(row.pk)}"' in back
    local = timezone.localtime(record.created_at)
    assert local.strftime("%Y-%m-%d %H:%M:%S.") in back  # times with seconds and zone


# --------------------------------------------------------------------------- replays


def test_headers_round_trip():
    headers = [("a", b"text"), ("b", b"\x00\xff"), ("c", None), ("\x00n", b"v")]
    assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers(encode_headers(headers, binary=True)) == headers


def test_rehandle_runs_the_handler_once_and_marks_the_record(admin_client, settings):
    row = make(Status.PUBLISHED, event_type="test.replayed")
    settings.OUTBOX_CONSUMER_GROUP = group = unique_group()
    record = rejected_copy(row, consumer_group=group)
    seen: list[Event] = []
    with registered("test.replayed", seen.append):
        response = run_action_on(admin_client, "rehandle", [record])
        assert texts(response) == [("success", "1 rejected record was replayed.")]
        assert [event.event_id for event in seen] == [row.event.event_id]
        assert OutboxMessage.objects.get(pk=row.pk).status == Status.CONSUMED
        record.refresh_from_db()
        assert record.replay_outcome == ReplayOutcome.HANDLED and record.replayed_at
        # Once only: a second replay finds the row consumed.
        response = run_action_on(admin_client, "rehandle", [record])
        assert len(seen) == 1
    record.refresh_from_db()
    assert record.replay_outcome == ReplayOutcome.DUPLICATE
    [entry, *_] = LogEntry.objects.filter(object_id=str(record.pk)).order_by("pk")
    assert entry.get_change_message() == "Replayed (handled)."


def test_rehandle_of_a_record_that_still_fails_says_so(admin_client):
    row = make(Status.PUBLISHED, event_type="test.still.unknown")
    record = rejected_copy(row, consumer_group="other-group")
    response = run_action_on(admin_client, "rehandle", [record])
    [(level, text)] = texts(response)
    assert level == "warning" and text.startswith("1 rejected record failed again")
    record.refresh_from_db()
    assert record.replay_outcome == ReplayOutcome.FAILED
    assert "test.still.unknown" in record.replay_note


def test_replay_needs_its_own_permission():
    row = make(Status.PUBLISHED, event_type="test.replayed")
    record = rejected_copy(row)
    viewer = client_for(user_with("view_rejectedrecord", username="viewer"))
    assert viewer.get(REJECTED_URL).context["action_form"] is None
    run_action_on(viewer, "rehandle", [record])
    record.refresh_from_db()
    assert record.replayed_at is None
    page = viewer.get(reverse("admin:django_outbox_rejectedrecord_change", args=[record.pk]))
    assert "Replay through the handler" not in page.content.decode()
    replayer = client_for(user_with("view_rejectedrecord", "replay_rejectedrecord"))
    page = replayer.get(reverse("admin:django_outbox_rejectedrecord_change", args=[record.pk]))
    assert "Replay through the handler" in page.content.decode()


def test_replay_refuses_to_run_inside_a_transaction():
    record = rejected_copy(make(Status.PUBLISHED))
    with transaction.atomic(), pytest.raises(RuntimeError, match="outside transaction.atomic"):
        replay.resend([record])


def run_action_on(client, action: str, records: list[RejectedRecord]):
    data = {"action": action, "index": "0", "_selected_action": [r.pk for r in records]}
    return client.post(REJECTED_URL, data, follow=True)


@pytest.mark.django_db(transaction=True)
def test_resend_puts_the_stored_bytes_back_on_the_topic(
    admin_client, settings, kafka_bootstrap, kafka_topic
):
    from tests.kafka_fixtures import read_topic

    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    row = make(Status.PUBLISHED, topic=kafka_topic)
    headers = [*record_headers(row, "default", {}), ("raw", b"\x00\xfe")]
    record = rejected_copy(row, headers=encode_headers(headers), key="k\u00e9")
    malformed = rejected_copy(
        row, offset=8, value=None, key="tomb", encoding="utf-8", reason=RejectionReason.MALFORMED
    )
    response = run_action_on(admin_client, "resend", [record, malformed])
    assert texts(response) == [("success", "2 rejected records were replayed.")]
    received = read_topic(kafka_bootstrap, kafka_topic, 2)
    by_key = {message.key: message for message in received}
    sent = by_key["k\u00e9".encode()]
    assert sent.value == row.payload.encode()
    assert [(name, bytes(value)) for name, value in sent.headers] == headers
    assert by_key[b"tomb"].value is None
    record.refresh_from_db()
    assert record.replay_outcome == ReplayOutcome.SENT
    assert record.replay_note == f"sent to {kafka_topic} again"


@pytest.mark.django_db(transaction=True)
def test_resend_with_no_broker_marks_the_records_failed(admin_client, settings):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = ["127.0.0.1:9"]
    settings.OUTBOX_KAFKA_PRODUCER = {"max_block_ms": 1000, "request_timeout_ms": 1000}
    record = rejected_copy(make(Status.PUBLISHED))
    response = run_action_on(admin_client, "resend", [record])
    assert texts(response)[0][0] == "warning"
    record.refresh_from_db()
    assert record.replay_outcome == ReplayOutcome.FAILED and record.replay_note


# --------------------------------------------------------------------------- CSS, i18n


def test_no_inline_style_in_templates_and_the_css_is_linked(admin_client):
    for template in (PACKAGE / "templates").rglob("*.html"):
        text = template.read_text()
        assert "<style" not in text and "style=" not in text, template
    make()
    for url in (LIST_URL, FAILURES_URL, REJECTED_URL):
        assert "django_outbox/admin.css" in admin_client.get(url).content.decode(), url
    assert (PACKAGE / "static" / "django_outbox" / "admin.css").is_file()


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="needs GNU gettext (xgettext)")
def test_makemessages_extracts_the_admin_messages(tmp_path, monkeypatch):
    """Messages are literals in gettext/ngettext: makemessages finds them."""
    copy = tmp_path / "django_outbox"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "locale"))
    (copy / "locale").mkdir()
    monkeypatch.chdir(copy)
    call_command("makemessages", locale=["de"], verbosity=0)
    po = (copy / "locale" / "de" / "LC_MESSAGES" / "django.po").read_text()
    for msgid in (
        'msgid "%(count)d outbox message will be retried now."',
        'msgid_plural "%(count)d outbox messages will be retried now."',
        'msgid_plural "%(count)d rejected records were replayed."',
        'msgid "Retry all in this group"',
        'msgid "No handler is registered for this event type in this project."',
    ):
        assert msgid in po, msgid


def test_event_json_round_trip_for_replay_helpers():
    row = make(Status.PUBLISHED)
    delivery = replay.delivery_of(rejected_copy(row))
    assert delivery.value == row.payload.encode()
    assert json.loads(delivery.value)["event_id"] == str(row.event.event_id)
    assert uuid.UUID(delivery.header("event_id") or "") == row.event.event_id
