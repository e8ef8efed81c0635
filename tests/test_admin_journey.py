"""One event's journey on a row's admin page (admin/journey.py, models/publications.py)."""

from __future__ import annotations

import datetime
import io
import json
import re
import uuid

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_outbox.admin import journey as journey_module
from django_outbox.admin.journey import Step, journey
from django_outbox.consumer.inbox import replay_inbox_key
from django_outbox.envelope import HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, ReplayRun, Status, lease_expiry
from django_outbox.models import publications as publications_module
from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.fencing import Fence, hold, new_token
from django_outbox.models.inbox import InboxEntry, RejectedRecord, RejectionReason
from django_outbox.models.publications import Publication
from django_outbox.ops.tracing import trace_id
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic
from tests.relay_support import IGNORE_LEAKED_SOCKETS, leaked_sockets_collected, make_rows
from tests.test_admin import client_for, detail_url, make, run_action

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def superuser() -> User:
    return User.objects.create_superuser("root", password="pw")


def lease(rows: list[OutboxMessage], now: datetime.datetime) -> Fence:
    """A claim of ``rows``: the lease in ``next_retry_at`` and the claim's fence rows."""
    fence = Fence(lease_expiry(now, 60), new_token())
    OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).update(next_retry_at=fence.lease)
    hold(connection, [row.pk for row in rows], fence, now)
    return fence


def titles(html: str) -> list[str]:
    return re.findall(r'<span class="outbox-step-title">(?:<a [^>]*>)?([^<]*)', html)


def event_id(row: OutboxMessage) -> str:
    return json.loads(row.payload)["event_id"]


# --------------------------------------------------------------------------- pure logic


def test_trace_id_is_read_from_a_w3c_traceparent():
    assert trace_id({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}) == TRACE
    assert trace_id({"traceparent": f"00-{TRACE.upper()}-00f067aa0ba902b7-01"}) == TRACE
    assert trace_id({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) is None
    assert trace_id({"traceparent": "00-xyz-00f067aa0ba902b7-01"}) is None
    assert trace_id({"trace_id": TRACE}) is None
    assert trace_id({}) is None


# --------------------------------------------------------------------------- the relay


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_page_shows_the_partition_and_offset_a_consumer_reads_back(
    relay_settings, kafka_bootstrap, producer_client
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    with leaked_sockets_collected():
        rows = make_rows(12, topic, keys=["a", "b", "c", "d"])
        Relay(burst=True, batch_size=5).run()
        records = read_topic(kafka_bootstrap, topic, expected_count=12)
    assert len(records) == 12
    client = client_for(superuser())
    by_id = {int(dict(r.headers)[HEADER_OUTBOX_ID]): r for r in records}
    assert set(by_id) == {row.pk for row in rows}
    for row in rows:
        record = by_id[row.pk]
        (entry,) = Publication.objects.filter(outbox_id=row.pk)
        assert (entry.topic, entry.partition, entry.offset) == (
            topic,
            record.partition,
            record.offset,
        )
        assert entry.published_at == OutboxMessage.objects.get(pk=row.pk).published_at
        assert entry.worker
        html = client.get(detail_url(row.pk)).content.decode()
        assert f"published to {topic}, partition {record.partition}, offset {record.offset}" in html


@pytest.mark.django_db
def test_publications_are_written_only_for_the_rows_the_write_back_changed():
    now = timezone.now()
    mine, lost = make(), make()
    fence = lease([mine, lost], now)
    # Another claim took ``lost`` meanwhile: this claim's write-back must not touch it.
    OutboxMessage.objects.filter(pk=lost.pk).update(next_retry_at=lease_expiry(now, 120))
    sent = [("t", (1, 7)), ("t", (2, 9))]
    changed = OutboxMessage.objects.mark_published(fence, [mine.pk, lost.pk], now, sent=sent)
    assert changed == 1
    assert list(Publication.objects.values_list("outbox_id", "partition", "offset")) == [
        (mine.pk, 1, 7)
    ]
    assert OutboxMessage.objects.get(pk=lost.pk).status == Status.PENDING


@pytest.mark.django_db
def test_one_insert_per_topic_at_most_and_an_unknown_position(django_assert_max_num_queries):
    now = timezone.now()
    with django_assert_max_num_queries(2):  # one per topic on PostgreSQL, one elsewhere
        publications_module.record(
            "default", [(1, "a.t", (0, 5)), (2, "b.t", None), (3, "a.t", (2, 2**40))], now
        )
    assert sorted(Publication.objects.values_list("outbox_id", "topic", "partition", "offset")) == [
        (1, "a.t", 0, 5),
        (2, "b.t", None, None),
        (3, "a.t", 2, 2**40),
    ]
    assert {p.published_at for p in Publication.objects.all()} == {
        now.replace(microsecond=now.microsecond // 1000 * 1000)
    }


@pytest.mark.django_db(transaction=True)
def test_rows_stay_published_when_their_publications_cannot_be_written(monkeypatch, caplog):
    # The row's status is the contract: an entry that cannot be written is logged, never
    # a reason to leave an acknowledged row pending (or to hold the UPDATE's locks longer).
    row = make()
    fence = lease([row], timezone.now())

    def broken(*args, **kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr(publications_module, "record", broken)
    changed = OutboxMessage.objects.mark_published(
        fence, [row.pk], timezone.now(), sent=[("t", (0, 1))]
    )
    assert changed == 1
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.PUBLISHED
    assert not Publication.objects.exists()
    assert "were not recorded (DatabaseError: disk full)" in caplog.text


# --------------------------------------------------------------------------- the time line


@pytest.mark.django_db
def test_every_step_appears_once_in_time_order():
    base = timezone.now() - datetime.timedelta(hours=1)
    at = [base + datetime.timedelta(minutes=n) for n in range(8)]
    headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    row = make()
    payload = json.loads(row.payload)
    payload["headers"] = headers
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=at[0], payload=json.dumps(payload))
    fence = lease([row], at[1])
    OutboxMessage.objects.back_off(
        fence,
        [row.pk],
        retry_count=1,
        error="KafkaTimeoutError: no answer",
        retry_at=at[2],
        now=at[1],
    )
    fence = lease([row], at[2])
    assert OutboxMessage.objects.mark_published(fence, [row.pk], at[2], sent=[(row.topic, (2, 41))])
    rejected = RejectedRecord.objects.create(
        consumer_group="billing",
        reason=RejectionReason.HANDLER_FAILED,
        error="ValueError: unknown currency",
        topic=row.topic,
        partition=2,
        offset=41,
        event_id=event_id(row),
    )
    RejectedRecord.objects.filter(pk=rejected.pk).update(created_at=at[3])
    inbox = InboxEntry.objects.create(
        consumer_group="search",
        event_id=event_id(row),
        event_type=row.event_type,
        topic=row.topic,
        partition=2,
        offset=41,
    )
    InboxEntry.objects.filter(pk=inbox.pk).update(handled_at=at[4])
    user = superuser()
    LogEntry.objects.log_actions(user.pk, [row], CHANGE, change_message="Retried by hand")
    LogEntry.objects.update(action_time=at[5])

    html = client_for(user).get(detail_url(row.pk)).content.decode()
    assert titles(html) == [
        "created (pending)",
        "attempt 1 failed sending to Kafka",
        f"published to {row.topic}, partition 2, offset 41",
        f"rejected by consumer group billing: handler failed ({row.topic}[2]@41)",
        "handled by consumer group search (its inbox), from partition 2, offset 41",
        "operator action",
    ]
    assert "KafkaTimeoutError: no answer" in html
    assert "ValueError: unknown currency" in html
    assert "Retried by hand" in html
    assert f"<code>{TRACE}</code>" in html
    assert f"<code>{event_id(row)}</code>" in html


@pytest.mark.django_db
def test_a_row_of_the_go_service_was_published_by_another_relay():
    now = timezone.now()
    row = make(Status.CONSUMED, published_at=now, consumed_at=now + datetime.timedelta(seconds=1))
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=now - datetime.timedelta(seconds=1))
    row.refresh_from_db()
    steps = journey(row).steps
    assert [s.kind for s in steps] == ["created", "published", "consumed"]
    assert "by another relay" in steps[1].title
    assert journey(row).trace_id is None


@pytest.mark.django_db
def test_a_real_operator_action_and_a_dead_row_appear():
    row = make(Status.DEAD, retry_count=20, last_error="broker said no")
    client = client_for(superuser())
    run_action(client, "retry_now", [row])
    html = client.get(detail_url(row.pk)).content.decode()
    assert titles(html)[-1] == "operator action"
    assert "root" in html  # who did it
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.PENDING


@pytest.mark.django_db
def test_a_replay_source_is_one_function(monkeypatch):
    row = make()

    def replays(subject):
        return [Step(subject.row.created_at, "replay", "replayed to group g")]

    monkeypatch.setattr(journey_module, "SOURCES", [*journey_module.SOURCES, replays])
    assert [s.title for s in journey(row).steps] == ["created (pending)", "replayed to group g"]


# --------------------------------------------------------------------------- the cost


def history(row: OutboxMessage, user: User, count: int) -> None:
    """``count`` steps of every kind for ``row``."""
    now = timezone.now()
    for n in range(count):
        FailedAttempt.objects.create(
            outbox_id=row.pk, attempt=n + 1, source="relay", error="e", failed_at=now
        )
        Publication.objects.create(
            outbox_id=row.pk, topic=row.topic, partition=0, offset=n, published_at=now
        )
        RejectedRecord.objects.create(
            consumer_group=f"g{n}",
            reason=RejectionReason.MALFORMED,
            topic=row.topic,
            partition=0,
            offset=row.pk * 1000 + n,
            event_id=event_id(row),
        )
        InboxEntry.objects.create(
            consumer_group=f"g{n}",
            event_id=event_id(row),
            event_type=row.event_type,
            topic=row.topic,
            partition=0,
            offset=n,
        )
    LogEntry.objects.log_actions(user.pk, [row] * count, CHANGE, change_message="x")


@pytest.mark.django_db
def test_the_page_does_a_bounded_number_of_queries(django_assert_num_queries):
    user = superuser()
    client = client_for(user)
    small, big = make(), make()
    history(small, user, 1)
    history(big, user, 60)  # more than a source shows
    ContentType.objects.get_for_model(OutboxMessage, for_concrete_model=False)
    with django_assert_num_queries(6):  # one per table: attempts, publications, inbox,
        steps = journey(big).steps  # rejected records, replay runs, LogEntry
    assert len(steps) == 1 + 5 * journey_module.HISTORY_ROWS
    with CaptureQueriesContext(connection) as few:
        assert client.get(detail_url(small.pk)).status_code == 200
    with django_assert_num_queries(len(few)):
        assert client.get(detail_url(big.pk)).status_code == 200


def replay_run(row: OutboxMessage, n: int = 0, **filters) -> ReplayRun:
    """A run that sent ``row`` (and the rows before it) again, for group ``g<n>``."""
    return ReplayRun.objects.create(
        operator="ops",
        target_group=f"g{n}",
        source="table:default",
        filters={"statuses": [Status.PUBLISHED.value], **filters},
        last_id=row.pk,
        sent=1,
        matched=1,
    )


def handled_again(row: OutboxMessage, run: ReplayRun) -> InboxEntry:
    return InboxEntry.objects.create(
        consumer_group=run.target_group,
        event_id=replay_inbox_key(event_id(row), run.token),
        event_type=row.event_type,
        topic=row.topic,
        partition=0,
        offset=run.pk,
    )


@pytest.mark.django_db
def test_replay_runs_cost_the_same_queries_for_one_run_or_many(django_assert_num_queries):
    one, many = make(Status.PUBLISHED), make(Status.PUBLISHED)
    handled_again(one, replay_run(one, ids=[one.pk]))
    for n in range(60):
        handled_again(many, replay_run(many, n, ids=[many.pk]))
    with django_assert_num_queries(2):  # the runs, the inbox entries of their replays
        steps = journey_module.replay_steps(
            journey_module.Subject(one, "default", "admin", json.loads(one.payload))
        )
    assert [s.kind for s in steps] == ["replay", "handled"]
    with django_assert_num_queries(2):
        steps = journey_module.replay_steps(
            journey_module.Subject(many, "default", "admin", json.loads(many.payload))
        )
    assert [s.kind for s in steps].count("replay") == journey_module.HISTORY_ROWS
    assert 0 < [s.kind for s in steps].count("handled") <= journey_module.HISTORY_ROWS
    client = client_for(superuser())
    with CaptureQueriesContext(connection) as few:
        assert client.get(detail_url(one.pk)).status_code == 200
    with django_assert_num_queries(len(few)):
        assert client.get(detail_url(many.pk)).status_code == 200


@pytest.mark.django_db
def test_only_the_runs_whose_selection_sent_the_row_appear():
    row = make(Status.PUBLISHED)
    sent = replay_run(row, 1, keys=[row.message_key])
    replay_run(row, 2, keys=["another key"])  # outside the run's filter
    replay_run(row, 3, statuses=[Status.DEAD.value])
    ReplayRun.objects.filter(pk=replay_run(row, 4).pk).update(last_id=row.pk - 1)  # stopped before
    ReplayRun.objects.filter(pk=replay_run(row, 5).pk).update(last_id=None)  # nothing acked
    ReplayRun.objects.filter(pk=replay_run(row, 6).pk).update(source="archive:/tmp/a.jsonl.gz")
    ReplayRun.objects.filter(pk=replay_run(row, 7).pk).update(source="table:other")
    before = row.created_at - datetime.timedelta(hours=1)
    ReplayRun.objects.filter(pk=replay_run(row, 9).pk).update(updated_at=before)  # row unwritten
    other_run = replay_run(row, 8, ids=[row.pk + 1000])
    handled_again(row, other_run)  # its entry is not this row's journey: its run is not
    sent.interrupt("Kafka away")
    steps = [s for s in journey(row).steps if s.kind in ("replay", "handled")]
    assert [s.title for s in steps] == [
        f"sent again by replay run #{sent.pk} to g1 (interrupted (resumable))"
    ]
    assert steps[0].actor == "ops"
    assert steps[0].detail == "no consumer group has handled it again yet"
    assert steps[0].link.endswith(f"/replayrun/{sent.pk}/change/")


# --------------------------------------------------------------------------- pruning


@pytest.mark.django_db
def test_prune_deletes_the_publications_of_pruned_rows_only():
    old = timezone.now() - datetime.timedelta(days=30)
    gone = make(Status.CONSUMED, published_at=old, consumed_at=old)
    kept = make(Status.DEAD, published_at=old)  # dead rows stay without --dead
    OutboxMessage.objects.filter(pk__in=[gone.pk, kept.pk]).update(updated_at=old, created_at=old)
    for row in (gone, kept):
        Publication.objects.create(
            outbox_id=row.pk, topic=row.topic, partition=0, offset=row.pk, published_at=old
        )
    fresh = Publication.objects.create(
        outbox_id=uuid.uuid4().int % 10**9 + 10**9,
        topic="t",
        partition=0,
        offset=1,
        published_at=timezone.now(),
    )  # a row pruned later: its entry is younger than the cutoff
    out = io.StringIO()
    call_command("outbox_prune", "--days", "7", "--dry-run", stdout=out)
    assert "would delete 1 publication(s) of pruned rows" in out.getvalue()
    assert Publication.objects.count() == 3
    call_command("outbox_prune", "--days", "7", stdout=out)
    assert "deleted 1 publication(s) of pruned rows" in out.getvalue()
    assert sorted(Publication.objects.values_list("outbox_id", flat=True)) == sorted(
        [kept.pk, fresh.outbox_id]
    )
