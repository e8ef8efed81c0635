"""Claims on outbox rows, and the fenced write-backs of what Kafka answered.

The legacy table has no lock columns, so a claim is a *lease* stored in
``next_retry_at``: ``lease_expiry(now, seconds)``, a whole second. While it runs,
``due()`` skips the row; when it runs out (a relay died) the row is due again.

Every write-back is fenced on ``status = 'pending' AND next_retry_at = <lease>``
and on the claim's token (``fencing``): whoever lost the row (the lease ran out
and another claim took it, a consumer marked it ``consumed``, or put it back to
``pending`` after a failed handler and a claim took it again, even within the
same second and so under the same lease value) changes nothing.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections, transaction
from django.utils import timezone

from django_outbox.backoff import retry_delay
from django_outbox.fields import clip_error
from django_outbox.models import buckets, fencing, row_locks
from django_outbox.models.fencing import Fence
from django_outbox.models.ordering import in_key_order
from django_outbox.models.outbox import (
    OutboxMessage,
    OutboxMessageQuerySet,
    Status,
    lease_expiry,
    retry_time,
)
from django_outbox.models.publications import Position


class ClaimedRow(NamedTuple):
    """The columns a sender needs, read as plain values (cheaper than model instances)."""

    id: int
    event_type: str
    topic: str
    message_key: str
    payload: str
    retry_count: int
    max_retry: int
    #: When the row was written (None on legacy rows without it): commit -> ack latency.
    created_at: datetime.datetime | None


COLUMNS = ClaimedRow._fields


@dataclass(frozen=True)
class Claim:
    """Rows of one database, leased until ``lease`` and held by ``token`` (``fencing``)."""

    alias: str
    lease: datetime.datetime
    rows: list[ClaimedRow]
    #: Unique to this claim: every write-back is fenced on it (never on a time alone).
    token: uuid.UUID = field(default_factory=fencing.new_token)
    #: ``time.monotonic()`` at the claim (the relay's batch duration is measured from it).
    claimed_at: float = field(default_factory=time.monotonic, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fence(self) -> Fence:
        return Fence(self.lease, self.token)

    def rows_manager(self) -> OutboxMessageQuerySet:
        return OutboxMessage.objects.using(self.alias).all()


@dataclass(frozen=True)
class Owner:
    """A relay that owns buckets of the key space (``buckets``): its name and lease cap."""

    name: str
    #: The earliest lease among its buckets (None: it owns none; keyless rows only).
    lease_cap: datetime.datetime | None
    #: It held every bucket at its last tick (a relay alone on its database): the claim
    #: then checks that it still does once per statement, not a hash per row.
    whole: bool = False

    def scope(self, rows: OutboxMessageQuerySet, now: datetime.datetime) -> OutboxMessageQuerySet:
        """``rows`` without the keyed rows of buckets this relay does not own now."""
        connection = connections[rows.db]
        meta = OutboxMessage._meta
        table = connection.ops.quote_name(meta.db_table)
        topic, key = (str(meta.get_field(name).column) for name in ("topic", "message_key"))  # type: ignore[union-attr]
        if self.whole:
            condition = buckets.owns_every_bucket_sql(connection, table, key)
        else:
            condition = buckets.owned_rows_sql(connection, table, topic, key)
        now_value = meta.get_field("next_retry_at").get_db_prep_value(now, connection)
        return rows.extra(where=[condition], params=[self.name, now_value])  # type: ignore[return-value]


class Failure(NamedTuple):
    """A claimed row Kafka did not take."""

    row: ClaimedRow
    error: str
    #: The record can never be delivered as it is (too large, invalid topic): dead at once.
    final: bool = False
    #: Kafka answered (an error the row may die of once out of retries); False when
    #: the fate is unknown (timeout, broker unreachable): the row never dies of it.
    definite: bool = True

    @property
    def kills(self) -> bool:
        """Whether this failure makes the row ``dead``."""
        return self.final or (self.definite and self.row.retry_count + 1 >= self.row.max_retry)


def claim(
    alias: str,
    batch_size: int,
    lease_seconds: float,
    *,
    ids: Sequence[int] | None = None,
    due_by: datetime.datetime | None = None,
    now: datetime.datetime | None = None,
    owner: Owner | None = None,
) -> Claim:
    """Lease up to ``batch_size`` due rows of ``alias`` (only among ``ids`` if given), oldest first.

    ``due_by``: take only rows due at that moment (default: now); a burst passes its
    start time, so that rows it failed (and which back off) wait for the next run.

    Always from the lowest due id, never from a floor: a row can become visible
    below any floor (its transaction committed late; the Go service's rows; a retry
    or a release), and the next row of its key, written after it committed, is
    then above. Only a claim that looks at every due row takes the earlier one
    first (issue 16). The status-first index (migration 0007) on PostgreSQL and
    SQLite, and the legacy status index on MySQL/MariaDB, keep that look at the
    pending rows only, however many published rows the table keeps.

    Each claim draws a token (``Claim.token``) and writes a fence row per row it
    leased (``fencing``), in the same statement (PostgreSQL) or transaction.

    ``owner``: a relay that shares the database with others by bucket (``buckets``):
    only rows without a key, or of a bucket this relay still owns with a live lease
    (checked in the claim's own statement), and a lease no later than the buckets'.

    On PostgreSQL, one statement (``_lease_returning``); elsewhere, one short
    transaction (``_lease_locked``). Either way, concurrent relays take disjoint rows
    without waiting for each other.

    The locking query reads ids only: when the planner goes through the status
    index (it does when its statistics say pending rows are few, while a backlog
    builds up), it sorts every due row to find the oldest; ids sort in memory,
    whole rows with their payloads spilled to disk (70 ms per claim of 500 with
    20,000 pending rows on PostgreSQL, against 12 ms).
    """
    now = now or timezone.now()
    lease = lease_expiry(now, lease_seconds)
    if owner is not None and owner.lease_cap is not None:
        # never past the buckets' lease: when they are free, every row is due again
        lease = min(lease, owner.lease_cap.replace(microsecond=0))
        if lease <= now:
            return Claim(alias, lease, [])
    fence = Fence(lease, fencing.new_token())
    due_by = min(due_by or now, now)
    due = _due_rows(alias, due_by, now, ids=ids, owner=owner)
    if connections[alias].vendor == "postgresql":
        leased = _lease_returning(alias, due, batch_size, fence, now, keep_order=owner is not None)
    else:
        leased = _lease_locked(alias, due, batch_size, fence, now, due_by=due_by, owner=owner)
    return Claim(alias, lease, leased, token=fence.token)


def _due_rows(
    alias: str,
    due_by: datetime.datetime,
    now: datetime.datetime,
    *,
    ids: Sequence[int] | None,
    owner: Owner | None,
) -> OutboxMessageQuerySet:
    """The rows a claim may take, in the order it takes them (key order, then id)."""
    due = OutboxMessage.objects.using(alias).due(due_by)
    if ids is not None:
        due = due.filter(pk__in=list(ids))
    if owner is not None:
        due = owner.scope(due, now)
    return in_key_order(due, alias).order_by("id")


def _lease_locked(
    alias: str,
    due: OutboxMessageQuerySet,
    batch_size: int,
    fence: Fence,
    now: datetime.datetime,
    *,
    due_by: datetime.datetime,
    owner: Owner | None,
) -> list[ClaimedRow]:
    """Lease rows of ``due`` in one short transaction (MySQL/MariaDB, SQLite).

    MariaDB has no ``UPDATE ... RETURNING``: ``SELECT id ... FOR UPDATE SKIP LOCKED``
    (``row_locks.lock_due_ids``: never a row of a key whose earlier row it skipped),
    one ``UPDATE`` setting the lease, then the columns of the
    rows leased read by primary key, and their fence rows written. SQLite has no row
    locks, but its transactions are serializable (one writer at a time; a concurrent
    writer gets "database is locked"), so the same statements are just as safe there.
    """
    manager = OutboxMessage.objects.using(alias)
    rows: list[ClaimedRow] = []
    with transaction.atomic(using=alias):
        # only a relay that owns its keys can keep them in order (``buckets``)
        locked = row_locks.lock_due_ids(alias, due, batch_size, keep_order=owner is not None)
        if locked:
            # The due() condition again: a no-op under row locks, and a guard for
            # any backend whose isolation would let a row slip between the two.
            again = manager.due(due_by) if owner is None else owner.scope(manager.due(due_by), now)
            row_locks.update_locked(
                connections[alias],
                again.with_ids(locked),
                {"next_retry_at": fence.lease, "updated_at": now},
            )
            held = manager.with_ids(locked).filter(status=Status.PENDING, next_retry_at=fence.lease)
            rows = list(map(ClaimedRow._make, held.order_by("id").values_list(*COLUMNS)))
            fencing.hold(connections[alias], [row.id for row in rows], fence, now)
    return rows


def _lease_returning(
    alias: str,
    due: OutboxMessageQuerySet,
    batch_size: int,
    fence: Fence,
    now: datetime.datetime,
    *,
    keep_order: bool = False,
) -> list[ClaimedRow]:
    """Lease the first ``batch_size`` rows of ``due`` in one ``UPDATE ... RETURNING``,
    with their fence rows written by the same statement (a data-modifying ``WITH``).

    No ``atomic()``: the statement is a transaction of its own in autocommit mode
    (``BEGIN`` and ``COMMIT`` would cost two more round trips), and part of the
    caller's transaction inside one. PostgreSQL checks the subquery's conditions
    again on the latest version of each row it locks (a row another claim changed
    meanwhile is left out), so the ``UPDATE`` needs no guard of its own.

    ``= ANY(ARRAY(subquery))``, not ``IN (subquery)``: PostgreSQL may run an ``IN``
    subquery with ``LIMIT ... SKIP LOCKED`` more than once (the inner side of a join),
    and each run skips the rows the last one locked, so a claim took more rows than
    its batch (CI saw a claim of 1 take 2). An ``ARRAY()`` subquery is an InitPlan: run
    once.

    ``keep_order``: no row of a key whose earlier row was skipped (``row_locks``).
    """
    connection = connections[alias]
    try:
        ids, params = _ids_to_lease(alias, due, batch_size, keep_order=keep_order)
    except EmptyResultSet:  # an empty ``ids``: nothing to ask the database
        return []
    meta = OutboxMessage._meta
    fields = {field.name: field for field in meta.concrete_fields}
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        field = fields[name]
        return quote(field.column or field.attname)

    sql = (
        f"WITH claimed AS (UPDATE {quote(meta.db_table)} SET {column('next_retry_at')} = %s, "
        f"{column('updated_at')} = %s WHERE {column('id')} = ANY(ARRAY({ids})) "
        f"RETURNING {_returning(column)}), "
        f"fenced AS ({fencing.hold_from(connection, 'claimed', column('id'))}) "
        f"SELECT * FROM claimed"
    )
    # The values the ORM would write (truncated to milliseconds), so that the
    # stored lease equals ``lease`` and the write-backs' fence matches it.
    values = (
        fields["next_retry_at"].get_db_prep_value(fence.lease, connection),
        fields["updated_at"].get_db_prep_value(now, connection),
    )
    hold = fencing.hold_params(connection, fence, now)
    with transaction.mark_for_rollback_on_error(using=alias):
        with connection.cursor() as cursor:
            cursor.execute(sql, (*values, *params, *hold))
            rows = cursor.fetchall()
    if settings.USE_TZ:
        rows = [(*row[:-1], _utc(row[-1])) for row in rows]
    return sorted(map(ClaimedRow._make, rows), key=itemgetter(0))


def _ids_to_lease(
    alias: str, due: OutboxMessageQuerySet, batch_size: int, *, keep_order: bool
) -> tuple[str, list[Any]]:
    """PostgreSQL: the ``SELECT`` of the ids a claim leases, locked, and its parameters."""
    if keep_order:
        return row_locks.ordered_claim_sql(alias, due, batch_size)
    select, params = due.values_list("id")[:batch_size].query.get_compiler(alias).as_sql()
    return f"{select} {connections[alias].ops.for_update_sql(skip_locked=True)}", list(params)


def _returning(column: Callable[[str], str]) -> str:
    """The claim's ``RETURNING`` list: ``COLUMNS``, ``created_at`` (the last) as UTC.

    A UTC ``timestamp`` is read by psycopg's C loader; a ``timestamptz`` by Django's,
    in pure Python (half the claim's CPU). ``_utc`` makes it aware again.
    """
    returning = [column(name) for name in COLUMNS]
    if settings.USE_TZ:
        returning[-1] = f"{returning[-1]} AT TIME ZONE 'UTC'"
    return ", ".join(returning)


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.replace(tzinfo=datetime.timezone.utc)


def record_published(
    claim: Claim,
    ids: Sequence[int],
    now: datetime.datetime | None = None,
    *,
    sent: Sequence[tuple[str, Position]] | None = None,
) -> int:
    """Mark rows Kafka acknowledged ``published``; return how many changed.

    ``sent``: per id, the topic and Kafka's (partition, offset), kept in
    ``Publication``, written after the fenced update (see ``mark_published``).
    """
    return claim.rows_manager().mark_published(claim.fence, ids, now or timezone.now(), sent=sent)


def record_failed(
    claim: Claim, failures: Sequence[Failure], now: datetime.datetime | None = None
) -> int:
    """Count a failed attempt on each row: back off, or ``dead`` when the answer says so.

    A row dies when its failure is ``final`` (the record itself is at fault), or
    when it is out of retries and the failure is a definite answer. A failure whose
    fate is unknown (``definite=False``: no answer in time, the broker unreachable)
    never kills a row: the record may be in Kafka, and the consumer deduplicates a
    later delivery. Rows that share attempt number, fate and error are written by
    one statement (a broker outage fails whole batches with the same error).
    """
    now = now or timezone.now()
    groups: dict[tuple[int, bool, str], list[int]] = defaultdict(list)
    for failure in failures:
        attempts = failure.row.retry_count + 1
        groups[(attempts, failure.kills, clip_error(failure.error))].append(failure.row.id)
    rows = claim.rows_manager()
    changed = 0
    for (attempts, dead, error), ids in groups.items():
        if dead:
            changed += rows.give_up(claim.fence, ids, retry_count=attempts, error=error, now=now)
        else:
            retry_at = retry_time(now, retry_delay(attempts))
            changed += rows.back_off(
                claim.fence, ids, retry_count=attempts, error=error, retry_at=retry_at, now=now
            )
    return changed


def release(
    claim: Claim,
    ids: Sequence[int],
    now: datetime.datetime | None = None,
    *,
    error: str | None = None,
    delay: float = 0.0,
) -> int:
    """Give rows back without counting an attempt: due again after ``delay`` seconds."""
    now = now or timezone.now()
    due_at = retry_time(now, delay) if delay > 0 else None
    return claim.rows_manager().release(claim.fence, ids, now, error=error, due_at=due_at)
