"""One event's journey: every step of an outbox row's life, from its tables, on one time line.

``journey(row)`` asks each function of ``SOURCES`` for its steps and sorts them by time.
A source reads one table (or none) with one indexed query of at most ``HISTORY_ROWS``
rows, so a row's page costs the same number of queries on a table of a million rows
as on an empty one:

- ``row_steps``: the row itself (created, scheduled, consumed, dead);
- ``attempt_steps``: ``FailedAttempt`` (worker, error), by ``outbox_id``;
- ``publication_steps``: ``Publication`` (topic, partition, offset, relay), by
  ``outbox_id``; a published row without one was sent by another relay (the Go
  service's);
- ``inbox_steps``: ``InboxEntry``, each consumer group that handled the event through
  its inbox, by event id;
- ``rejection_steps``: ``RejectedRecord``, the copies a group rejected (and their
  replays), by event id;
- ``replay_steps``: the ``ReplayRun``\\ s of ``outbox_replay`` that sent the row again
  (one query on the small runs table; each run's recorded filters are tested on the
  row by ``history.selection``), and the inbox entries of those replays (their key
  is one per event and run, ``consumer.inbox.replay_inbox_key``: one more query);
- ``action_steps``: Django's ``LogEntry`` of the row, what operators did.

A new kind of step is one more function that takes a ``Subject`` and returns
``Step``\\ s, appended to ``SOURCES``.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils.translation import gettext as _

from django_outbox.conf import outbox_settings
from django_outbox.consumer.inbox import replay_inbox_key
from django_outbox.history.selection import Selection
from django_outbox.models import OutboxMessage, ReplayRun, Status
from django_outbox.models.attempts import FailedAttempt, Source
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from django_outbox.models.publications import Publication
from django_outbox.models.replay_runs import table_source_name
from django_outbox.ops import tracing

#: Rows a source reads at most (its newest).
HISTORY_ROWS = 50
#: Replay runs read at most (the newest) to find those that sent a row again.
REPLAY_RUNS_READ = 1000


@dataclass(frozen=True)
class Step:
    """One moment of the event's life, as the page shows it."""

    at: datetime.datetime | None
    #: What happened, in a word the page styles by (``outbox-step-<kind>``).
    kind: str
    title: str
    #: Who did it: a worker (host:pid), a consumer group, an operator.
    actor: str = ""
    #: Shown as preformatted text (an error, a change message).
    detail: str = ""
    link: str = ""
    warning: bool = False


@dataclass
class Subject:
    """What the sources need to know of the row whose journey is asked for."""

    row: OutboxMessage
    alias: str
    site: str
    envelope: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str | None:
        try:
            return str(uuid.UUID(str(self.envelope["event_id"])))
        except (TypeError, ValueError, KeyError, AttributeError):
            return None

    @property
    def headers(self) -> dict[str, Any]:
        headers = self.envelope.get("headers")
        return headers if isinstance(headers, dict) else {}


@dataclass
class Journey:
    steps: list[Step]
    trace_id: str | None
    event_id: str | None


StepSource = Callable[[Subject], Iterable[Step]]

# Steps of one moment keep the order of an event's life.
_RANK = {"created": 0, "scheduled": 1, "attempt": 2, "published": 3, "rejected": 4}


def _order(step: Step) -> tuple[bool, datetime.datetime, int]:
    moment = step.at or datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    return (step.at is None, moment, _RANK.get(step.kind, 5))


def journey(row: OutboxMessage, *, site: str = "admin") -> Journey:
    """The steps of ``row``'s life from every source of ``SOURCES``, oldest first."""
    try:
        envelope = json.loads(row.payload)
    except (TypeError, ValueError):
        envelope = {}
    subject = Subject(
        row,
        row._state.db or outbox_settings.database,
        site,
        envelope if isinstance(envelope, dict) else {},
    )
    steps = [step for source in SOURCES for step in source(subject)]
    steps.sort(key=_order)
    return Journey(steps, tracing.trace_id(subject.headers), subject.event_id)


def row_steps(subject: Subject) -> list[Step]:
    """What the row itself says: created, scheduled, consumed, dead."""
    row = subject.row
    steps = [Step(row.created_at, "created", _("created (pending)"))]
    due = row.next_retry_at
    # Scheduled (publish_event(deliver_at=...)): a "not before" that is no lease.
    if row.status == Status.PENDING and row.retry_count == 0 and not row.last_error:
        if due is not None and due.microsecond and not row.published_at:
            steps.append(Step(due, "scheduled", _("due: not sent before this moment")))
    if row.consumed_at is not None:
        steps.append(Step(row.consumed_at, "consumed", _("consumed (marked on the row)")))
    if row.status == Status.DEAD:
        steps.append(
            Step(row.updated_at, "dead", _("dead"), detail=row.last_error or "", warning=True)
        )
    return steps


def attempt_steps(subject: Subject) -> list[Step]:
    attempts = FailedAttempt.objects.using(subject.alias).of(subject.row.pk)[:HISTORY_ROWS]
    return [
        Step(
            a.failed_at,
            "attempt",
            (
                _("attempt %(n)d failed sending to Kafka")
                if a.source == Source.RELAY
                else _("attempt %(n)d failed in a handler")
            )
            % {"n": a.attempt}
            + (_(", the row made dead") if a.dead else ""),
            actor=a.worker,
            detail=a.error,
            warning=True,
        )
        for a in attempts
    ]


def publication_steps(subject: Subject) -> list[Step]:
    row = subject.row
    entries = list(Publication.objects.using(subject.alias).of(row.pk)[:HISTORY_ROWS])
    steps = [
        Step(
            p.published_at,
            "published",
            _("published to %(topic)s, partition %(partition)s, offset %(offset)s")
            % {
                "topic": p.topic,
                "partition": "?" if p.partition is None else p.partition,
                "offset": "?" if p.offset is None else p.offset,
            },
            actor=p.worker,
        )
        for p in entries
    ]
    if not entries and row.published_at is not None:
        steps.append(
            Step(
                row.published_at,
                "published",
                _("published to %(topic)s by another relay (no partition and offset kept)")
                % {"topic": row.topic},
            )
        )
    return steps


def inbox_steps(subject: Subject) -> list[Step]:
    if subject.event_id is None:
        return []
    entries = (
        InboxEntry.objects.using(outbox_settings.database)
        .filter(event_id=subject.event_id)
        .order_by("-id")[:HISTORY_ROWS]
    )
    return [
        Step(
            e.handled_at,
            "handled",
            _(
                "handled by consumer group %(group)s (its inbox), from partition %(partition)d, "
                "offset %(offset)d"
            )
            % {"group": e.consumer_group, "partition": e.partition, "offset": e.offset},
            actor=e.consumer_group,
        )
        for e in entries
    ]


def rejection_steps(subject: Subject) -> list[Step]:
    if subject.event_id is None:
        return []
    records = (
        RejectedRecord.objects.using(outbox_settings.database)
        .filter(event_id=subject.event_id)
        .order_by("-id")[:HISTORY_ROWS]
    )
    steps: list[Step] = []
    for r in records:
        link = reverse(f"{subject.site}:django_outbox_rejectedrecord_change", args=[r.pk])
        title = _("rejected by consumer group %(group)s: %(reason)s (%(topic)s[%(p)d]@%(o)d)") % {
            "group": r.consumer_group,
            "reason": r.get_reason_display(),
            "topic": r.topic,
            "p": r.partition,
            "o": r.offset,
        }
        steps.append(
            Step(r.created_at, "rejected", title, r.consumer_group, r.error, link, warning=True)
        )
        if r.replayed_at is not None:
            title = _("rejected record replayed: %(outcome)s") % {
                "outcome": r.get_replay_outcome_display()
            }
            steps.append(Step(r.replayed_at, "replayed", title, r.consumer_group, r.replay_note))
    return steps


def replay_steps(subject: Subject) -> list[Step]:
    """The replay runs that sent the row again, then each group that handled a replay.

    A run sent the row when the row is past none of its acknowledgements
    (``id <= last_id``: runs go in id order) and matches the filters the run recorded.
    The statuses are tested as the row is now: a dead row replayed, then retried by
    hand and published, no longer matches its run. Archive runs are left out (their
    rows are not in this table, their ``last_id`` is a line number).
    """
    runs = _replay_runs(subject)
    if not runs:
        return []
    handled = _replay_entries(subject, runs)
    steps = []
    for run in runs:
        groups = sorted({entry.consumer_group for entry in handled.get(run.pk, [])})
        title = _("sent again by replay run #%(run)d to %(group)s (%(state)s)") % {
            "run": run.pk,
            "group": run.group_label,
            "state": run.get_state_display(),
        }
        detail = (
            _("handled again by: %(groups)s") % {"groups": ", ".join(groups)}
            if groups
            else _("no consumer group has handled it again yet")
        )
        link = reverse(f"{subject.site}:django_outbox_replayrun_change", args=[run.pk])
        steps.append(Step(run.started_at, "replay", title, run.operator, detail, link))
    steps.extend(
        Step(
            entry.handled_at,
            "handled",
            _(
                "handled again by consumer group %(group)s for replay run #%(run)d, from "
                "partition %(partition)d, offset %(offset)d"
            )
            % {
                "group": entry.consumer_group,
                "run": run_id,
                "partition": entry.partition,
                "offset": entry.offset,
            },
            actor=entry.consumer_group,
        )
        for run_id, entries in handled.items()
        for entry in entries
    )
    return steps


def _replay_runs(subject: Subject) -> list[ReplayRun]:
    """The runs that sent the row (one query): their filters are JSON, tested here.

    Of the runs that acknowledged past the row after it was written, the newest
    ``REPLAY_RUNS_READ`` are read; the newest ``HISTORY_ROWS`` that match are kept.
    """
    row = subject.row
    candidates = ReplayRun.objects.using(subject.alias).filter(
        source=table_source_name(subject.alias), last_id__gte=row.pk
    )
    if row.created_at is not None:
        # A margin for the millisecond clipping of the run's updated_at.
        written = row.created_at - datetime.timedelta(seconds=1)
        candidates = candidates.filter(updated_at__gte=written)
    read = candidates.defer("error").order_by("-id")[:REPLAY_RUNS_READ]
    return [run for run in read if Selection.from_dict(run.filters).matches(row)][:HISTORY_ROWS]


def _replay_entries(subject: Subject, runs: list[ReplayRun]) -> dict[int, list[InboxEntry]]:
    """The inbox entries of the event handled again for ``runs``, by run id (one query)."""
    if subject.event_id is None:
        return {}
    keys = {replay_inbox_key(subject.event_id, run.token): run.pk for run in runs}
    entries = (
        InboxEntry.objects.using(outbox_settings.database)
        .filter(event_id__in=list(keys))
        .order_by("-id")[:HISTORY_ROWS]
    )
    by_run: dict[int, list[InboxEntry]] = {}
    for entry in entries:
        by_run.setdefault(keys[entry.event_id], []).append(entry)
    return by_run


def action_steps(subject: Subject) -> list[Step]:
    content_type = ContentType.objects.get_for_model(OutboxMessage, for_concrete_model=False)
    entries = (
        LogEntry.objects.filter(content_type=content_type, object_id=str(subject.row.pk))
        .select_related("user")
        .order_by("-id")[:HISTORY_ROWS]
    )
    return [
        Step(
            e.action_time,
            "action",
            _("operator action"),
            actor=e.user.get_username(),
            detail=e.get_change_message() or str(e),
        )
        for e in entries
    ]


#: Where the steps come from, in this order (then sorted by time): add a function here.
SOURCES: list[StepSource] = [
    row_steps,
    attempt_steps,
    publication_steps,
    inbox_steps,
    rejection_steps,
    replay_steps,
    action_steps,
]
