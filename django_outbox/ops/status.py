"""What ``manage.py outbox_status`` reports: the state of the outbox, per database.

Its cost does not grow with the consumed history. Every query reads a range of the
index ``idx_outbox_status_next (status, next_retry_at, biz_type)``: the pending,
published and dead rows are counted exactly, one status range each (their number
is the work in hand, not the table's age); the consumed rows, usually nearly all of
the table, are counted up to ``COUNT_CAP`` and past it taken from the database's
own row estimate, minus the others (``consumed_exact`` is then false). The derived
states read the ``pending`` range; the oldest due row is its first entry (see
``oldest_due``). Two figures also read the rows of one status range: dead rows
changed in the last hour (``updated_at``) and published rows older than a
threshold (``published_at``); their cost grows with the number of dead and
published rows (``outbox_prune --dead`` bounds the first, a healthy consumer the
second). ``exact=True`` and ``by_type=True`` count every row instead: one scan of
the whole index.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections
from django.db.models import Count, F, Min
from django.utils import timezone

from django_outbox.models import OutboxMessage, OutboxMessageQuerySet, Status, buckets, counting

#: Window of the "dead recently" figure, seconds.
RECENT_DEAD_WINDOW = 3600


def oldest_due(
    queryset: OutboxMessageQuerySet, now: datetime.datetime
) -> tuple[datetime.datetime, int] | None:
    """Since when the oldest due row waits, and its id; ``None`` when nothing is due.

    The earlier of the first index entry among retried rows (``next_retry_at`` in
    the past) and the never-tried row (``next_retry_at`` NULL) with the lowest id;
    the cost of the second grows with the backlog of never-tried rows only.
    """
    candidates: list[tuple[datetime.datetime, int]] = []
    retried = (
        queryset.filter(status=Status.PENDING, next_retry_at__lte=now)
        .order_by("next_retry_at")
        .values_list("next_retry_at", "pk")
        .first()
    )
    if retried is not None and retried[0] is not None:
        candidates.append((retried[0], retried[1]))
    # "+ 0" keeps PostgreSQL from walking the primary key from its start, through
    # the old consumed rows, and makes both databases read this range of the index.
    fresh_id = queryset.filter(status=Status.PENDING, next_retry_at__isnull=True).aggregate(
        oldest=Min(F("pk") + 0)
    )["oldest"]
    if fresh_id is not None:
        created = queryset.filter(pk=fresh_id).values_list("created_at", flat=True).first()
        if created is not None:
            candidates.append((created, fresh_id))
    return min(candidates) if candidates else None


def count_statuses(rows: OutboxMessageQuerySet) -> tuple[dict[str, int], bool]:
    """Rows per status, and whether the consumed count is exact (see the module).

    A status the Go side wrote that this app does not know would be missed here: the
    consumed estimate, the table's minus the known statuses, then holds those rows.
    """
    counted: dict[str, int] = {
        status.value: rows.filter(status=status).count()
        for status in (Status.PENDING, Status.PUBLISHED, Status.DEAD)
    }
    consumed = counting.capped_count(rows.filter(status=Status.CONSUMED), counting.COUNT_CAP)
    if consumed <= counting.COUNT_CAP:
        return {**counted, Status.CONSUMED.value: consumed}, True
    estimate = counting.table_estimate(rows.db)
    if estimate is not None:
        consumed = max(estimate - sum(counted.values()), consumed)
    return {**counted, Status.CONSUMED.value: consumed}, False


@dataclass
class DatabaseStatus:
    """The figures of one database alias."""

    alias: str
    vendor: str
    statuses: dict[str, int] = field(default_factory=dict)
    #: False when ``statuses["consumed"]`` is an estimate (more than ``COUNT_CAP`` rows).
    consumed_exact: bool = True
    #: Pending rows split by what happens next: ready, scheduled, backing_off, in_flight.
    pending: dict[str, int] = field(default_factory=dict)
    #: {event type: {status: count}}, with ``by_type`` only.
    by_type: dict[str, dict[str, int]] | None = None
    oldest_due_id: int | None = None
    oldest_due_age: float | None = None  # seconds
    dead_recently: int = 0
    published_older: int = 0
    published_older_than: float = 0.0  # seconds
    #: The running relays and how many buckets of the key space each owns (``buckets``).
    relays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def database_status(
    alias: str,
    *,
    by_type: bool = False,
    exact: bool = False,
    published_older_than: float = 3600.0,
    now: datetime.datetime | None = None,
) -> DatabaseStatus:
    """Measure the outbox table of database ``alias``."""
    now = now or timezone.now()
    rows = OutboxMessage.objects.using(alias)
    result = DatabaseStatus(
        alias, connections[alias].vendor, published_older_than=published_older_than
    )
    if exact or by_type:
        counted: dict[str, int] = {}
        per_type = rows.order_by().values_list("event_type", "status").annotate(n=Count("*"))
        by_types: dict[str, dict[str, int]] = {}
        for event_type, status, n in per_type.values_list("event_type", "status", "n"):
            by_types.setdefault(event_type, {})[status] = n
            counted[status] = counted.get(status, 0) + n
        if by_type:
            result.by_type = dict(sorted(by_types.items()))
    else:
        counted, result.consumed_exact = count_statuses(rows)
    result.statuses = {status: counted.pop(status, 0) for status in Status.values}
    result.statuses.update(counted)  # a status the Go side wrote that we do not know
    result.pending = {
        "ready": rows.due(now).count(),
        "scheduled": rows.scheduled(now).count(),
        "backing_off": rows.backing_off(now).count(),
        "in_flight": rows.in_flight(now).count(),
    }
    found = oldest_due(rows, now)
    if found is not None:
        since, result.oldest_due_id = found
        result.oldest_due_age = max((now - since).total_seconds(), 0.0)
    recent = now - datetime.timedelta(seconds=RECENT_DEAD_WINDOW)
    result.dead_recently = rows.dead().filter(updated_at__gte=recent).count()
    cutoff = now - datetime.timedelta(seconds=published_older_than)
    result.published_older = rows.published().filter(published_at__lt=cutoff).count()
    result.relays = buckets.assignment(alias, now)
    return result


def problems(
    figures: list[DatabaseStatus],
    *,
    fail_if_oldest: float | None = None,
    fail_if_dead: int | None = None,
) -> list[str]:
    """The thresholds crossed, one sentence each (empty: all is well)."""
    found = []
    for db in figures:
        if (
            fail_if_oldest is not None
            and db.oldest_due_age is not None
            and db.oldest_due_age > fail_if_oldest
        ):
            found.append(
                f"{db.alias}: the oldest due row (#{db.oldest_due_id}) has waited "
                f"{db.oldest_due_age:.0f} s, more than {fail_if_oldest:g} s: is a relay running?"
            )
        if fail_if_dead is not None and db.dead_recently > fail_if_dead:
            found.append(
                f"{db.alias}: {db.dead_recently} row(s) went dead in the last hour, more than "
                f"{fail_if_dead}: see the admin's dead rows and their last error"
            )
    return found


def duration(seconds: float) -> str:
    """``3725`` -> ``"1 h 2 min"``: an age as an operator reads it."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def consumed_text(db: DatabaseStatus) -> str:
    """The consumed count as counted: ``"1,234"``, ``"~990,000"`` or ``"> 10,000"``."""
    consumed = db.statuses.get(Status.CONSUMED, 0)
    if db.consumed_exact:
        return f"{consumed:,}"
    if consumed > counting.COUNT_CAP + 1:
        return f"~{consumed:,}"
    return f"> {counting.COUNT_CAP:,}"


def render(db: DatabaseStatus) -> str:
    """The human report of one database."""
    pending = db.pending
    lines = [
        f"{db.alias} ({db.vendor}): {'' if db.consumed_exact else 'about '}{db.total:,} row(s)",
        f"  pending    {db.statuses.get(Status.PENDING, 0):>12,}   ready {pending['ready']:,}, "
        f"scheduled {pending['scheduled']:,}, backing off {pending['backing_off']:,}, "
        f"in flight {pending['in_flight']:,}",
        f"  published  {db.statuses.get(Status.PUBLISHED, 0):>12,}   "
        f"{db.published_older:,} published more than {duration(db.published_older_than)} ago",
        f"  consumed   {consumed_text(db):>12}",
        f"  dead       {db.statuses.get(Status.DEAD, 0):>12,}   "
        f"{db.dead_recently:,} in the last hour",
    ]
    for status, count in db.statuses.items():
        if status not in Status.values:
            lines.append(f"  {status:<10} {count:>12,}   (not a status this app knows)")
    if db.oldest_due_age is None:
        lines.append("  oldest due: none (nothing waits for the relay)")
    else:
        lines.append(f"  oldest due: #{db.oldest_due_id}, waiting {duration(db.oldest_due_age)}")
    live = [relay for relay in db.relays if relay["alive"]]
    if live:
        owned = ", ".join(f"{relay['relay']} {relay['buckets']}" for relay in live)
        lines.append(f"  relays: {len(live)} (buckets of {buckets.BUCKETS}: {owned})")
    if db.by_type is not None:
        lines.append("  by event type:")
        width = max((len(name) for name in db.by_type), default=0)
        for event_type, counts in db.by_type.items():
            parts = ", ".join(f"{status} {n:,}" for status, n in sorted(counts.items()))
            lines.append(f"    {event_type:<{width}}  {parts}")
    return "\n".join(lines)
