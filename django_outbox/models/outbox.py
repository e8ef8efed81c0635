"""The legacy outbox table ``agent_outbox_messages``, shared with the Go service.

The model mirrors the Go model (see README.rst, "The table") column for column:
no extra columns, no extra constraints. ``event_type`` lives in the historical
column ``biz_type``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, models, transaction
from django.db.models import Q, Value
from django.db.models.functions import Coalesce, TruncSecond
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import (
    MillisecondDateTimeField,
    ShortTextField,
    clip_error,
    truncate_to_millis,
)
from django_outbox.models import attempts, fencing
from django_outbox.models.pruning import count_in_chunks, delete_in_chunks

if TYPE_CHECKING:
    from django_outbox.envelope import Event
    from django_outbox.models.fencing import Fence


class Status(models.TextChoices):
    """The four statuses, a contract shared with the Go service."""

    PENDING = "pending", _("pending")
    PUBLISHED = "published", _("published")
    CONSUMED = "consumed", _("consumed")
    DEAD = "dead", _("dead")


#: Statuses after which nothing happens to a row by itself.
FINAL_STATUSES = (Status.CONSUMED, Status.DEAD)


def lease_expiry(now: datetime.datetime, seconds: float) -> datetime.datetime:
    """When a relay's claim made at ``now`` for ``seconds`` runs out.

    The legacy table has no lock columns, so a claim lives in ``next_retry_at``.
    A lease expiry is always a whole second and a backoff time never is (see
    ``retry_time``): that is how the admin tells "in flight" from "backing off".
    Two claims within one second get the same value: write-backs are fenced on the
    claim's token too (``fencing``), never on this time alone.
    """
    expiry = now + datetime.timedelta(seconds=seconds)
    if expiry.microsecond:
        expiry = expiry.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return expiry


def retry_time(now: datetime.datetime, delay: float) -> datetime.datetime:
    """``now + delay`` at millisecond precision, never on a whole second (see ``lease_expiry``)."""
    moment = truncate_to_millis(now + datetime.timedelta(seconds=delay))
    if moment.microsecond == 0:
        moment += datetime.timedelta(milliseconds=1)
    return moment


#: A pending row's "scheduled" marks (with a future ``next_retry_at`` not on a whole second).
_SCHEDULED = Q(retry_count=0, last_error__isnull=True)


def scheduled_time(now: datetime.datetime, at: datetime.datetime) -> datetime.datetime | None:
    """When a row published at ``now`` for ``at`` is due: ``None`` (now) if ``at`` is not
    later than ``now``, else ``at`` at millisecond precision and never on a whole second
    (a whole second is a relay's lease, see ``lease_expiry``)."""
    moment = truncate_to_millis(at)
    if moment.microsecond == 0:
        moment += datetime.timedelta(milliseconds=1)
    return moment if moment > now else None


def _whole_second() -> TruncSecond:
    # Truncated in UTC, whatever TIME_ZONE says: in another zone PostgreSQL truncates
    # the local time and the result never equals the stored lease.
    return TruncSecond("next_retry_at", tzinfo=datetime.timezone.utc)


class OutboxMessageQuerySet(models.QuerySet["OutboxMessage"]):
    def pending(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PENDING)

    def due(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows whose retry window (or relay lease) is over or never set."""
        now = now or timezone.now()
        return self.filter(
            Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now), status=Status.PENDING
        )

    def in_flight(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows a relay has claimed and whose lease has not run out."""
        now = now or timezone.now()
        return self.filter(
            status=Status.PENDING, next_retry_at__gt=now, next_retry_at=_whole_second()
        )

    def backing_off(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows waiting for their retry window after a failure (not ``scheduled``)."""
        now = now or timezone.now()
        return (
            self.filter(status=Status.PENDING, next_retry_at__gt=now)
            .exclude(next_retry_at=_whole_second())
            .exclude(_SCHEDULED)
        )

    def scheduled(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows published for later (``publish_event(deliver_at=...)``), not yet due.

        Like a backoff, never a whole second; unlike one, never tried and no error:
        ``retry_count = 0`` and ``last_error IS NULL`` (a failure sets both, a relay
        giving a row back later sets ``last_error``).
        """
        now = now or timezone.now()
        return self.filter(_SCHEDULED, status=Status.PENDING, next_retry_at__gt=now).exclude(
            next_retry_at=_whole_second()
        )

    def published(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PUBLISHED)

    def consumed(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.CONSUMED)

    def dead(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.DEAD)

    def finished_before(
        self, cutoff: datetime.datetime, statuses: tuple[str, ...] = (Status.CONSUMED,)
    ) -> OutboxMessageQuerySet:
        """Rows in ``statuses`` whose last change is older than ``cutoff``.

        Only final statuses count, and ``published`` (opt-in, for events that no
        consumer here marks consumed: handled by another service, or of a type no
        handler knows); never ``pending``.
        """
        prunable = [s for s in statuses if s in FINAL_STATUSES or s == Status.PUBLISHED]
        return self.filter(status__in=prunable, updated_at__lt=cutoff)

    def published_before(self, cutoff: datetime.datetime) -> OutboxMessageQuerySet:
        """``published`` rows whose last change is older than ``cutoff``."""
        return self.filter(status=Status.PUBLISHED, updated_at__lt=cutoff)

    def prune(
        self,
        cutoff: datetime.datetime,
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """Delete rows in ``statuses`` older than ``cutoff``, in chunks; return how many went.

        ``consumed``, ``dead`` and (opt-in) ``published`` rows can go, never
        ``pending``; one short statement per chunk keeps locks small on a busy table,
        and each re-checks the condition.
        """
        rows = self.finished_before(cutoff, statuses)
        return delete_in_chunks(rows, chunk, created=("created_at", cutoff))

    def count_prunable(
        self,
        cutoff: datetime.datetime,
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """How many rows ``prune`` would delete now, read as it reads them: the rows past
        the last one created before ``cutoff`` are not read (pruning.py)."""
        rows = self.finished_before(cutoff, statuses)
        return count_in_chunks(rows, chunk, created=("created_at", cutoff))

    # ------------------------------------------------------------------------------
    # State changes. Every change of a row's status, retry budget or lease is one of
    # the methods below (the consumer's are in their own block further down): a
    # reader finds every transition of the shared table in this file.
    #
    # The relay's write-backs are *fenced*: they change only the rows among ``ids``
    # that are still ``pending`` under the lease the relay took and held by its
    # claim's token (``Claim.fence``, see ``fencing``).
    # Whoever lost the lease (it ran out and another relay took the row, or a
    # consumer already marked it consumed) changes nothing.

    def create_pending(
        self,
        *,
        event_type: str,
        topic: str,
        message_key: str,
        payload: str,
        max_retry: int,
        notify: bool = False,
    ) -> OutboxMessage:
        r"""(nothing) -> pending: one ``INSERT`` in the caller's transaction.

        ``notify``: on PostgreSQL the same statement also ``NOTIFY``\s the relays
        (``wakeup.CHANNEL``), delivered at commit; PostgreSQL folds the repeats of
        one transaction into one notification. No extra round trip.

        The statement is built once per database and the values are adapted by the
        fields themselves, so the row is exactly what ``save()`` would write; what
        is skipped is the ORM's per-call compiling (and the model's ``pre_save`` /
        ``post_save`` signals), most of what ``publish_event()`` cost over a bare
        ``INSERT`` (bench/publish_bench.py).
        """
        alias = self.db
        connection = connections[alias]
        now = truncate_to_millis(timezone.now())
        values = {
            "event_type": event_type,
            "topic": topic,
            "message_key": message_key,
            "payload": payload,
            "status": Status.PENDING,
            "retry_count": 0,
            "max_retry": max_retry,
            "created_at": now,
            "updated_at": now,
        }
        sql, fields, returning = _insert_statement(connection, notify)
        params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
        with transaction.mark_for_rollback_on_error(using=alias):
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if returning is not None:
                    pk = connection.ops.fetch_returned_insert_columns(  # type: ignore[attr-defined]
                        cursor, returning
                    )[0]
                else:
                    meta = OutboxMessage._meta
                    pk = connection.ops.last_insert_id(cursor, meta.db_table, "id")
        message = OutboxMessage(id=pk, next_retry_at=None, last_error=None, **values)
        message._state.adding = False
        message._state.db = alias
        return message

    def with_ids(self, ids: Iterable[int]) -> OutboxMessageQuerySet:
        """The rows among ``ids``, written into the SQL as integers (see ``id_list``).

        ``filter(pk__in=ids)`` adapts one parameter per id: for the relay's batches of
        hundreds of rows, that was most of the CPU a claim or a write-back cost.
        """
        quote = connections[self.db].ops.quote_name
        column = (
            f"{quote(OutboxMessage._meta.db_table)}.{quote(_concrete_field('id').column or 'id')}"
        )
        # extra(), not a RawSQL filter: MySQL would get "(... IN (...)) = 1", which its
        # optimizer cannot read as a range of the primary key (a locking read would
        # then lock every row it examined).
        rows = self.extra(where=[f"{column} IN ({id_list(ids) or 'NULL'})"])
        return rows  # type: ignore[return-value]

    def mark_published(self, fence: Fence, ids: Sequence[int], now: datetime.datetime) -> int:
        """pending -> published: Kafka acknowledged these rows (never before that)."""
        return self._fenced_update(
            fence,
            ids,
            status=Status.PUBLISHED,
            published_at=now,
            next_retry_at=None,
            updated_at=now,
        )

    def back_off(
        self,
        fence: Fence,
        ids: Sequence[int],
        *,
        retry_count: int,
        error: str,
        retry_at: datetime.datetime,
        now: datetime.datetime,
    ) -> int:
        """pending -> pending, due again at ``retry_at``: one failed attempt counted."""
        with transaction.atomic(using=self.db, savepoint=False):
            changed = self._fenced_update(
                fence,
                ids,
                retry_count=retry_count,
                last_error=clip_error(error),
                next_retry_at=retry_at,
                updated_at=now,
            )
            self._attempts_failed(ids, changed, retry_count, error, now, dead=False)
        return changed

    def give_up(
        self,
        fence: Fence,
        ids: Sequence[int],
        *,
        retry_count: int,
        error: str,
        now: datetime.datetime,
    ) -> int:
        """pending -> dead: a definite answer that this row can never be delivered."""
        with transaction.atomic(using=self.db, savepoint=False):
            changed = self._fenced_update(
                fence,
                ids,
                status=Status.DEAD,
                retry_count=retry_count,
                last_error=clip_error(error),
                next_retry_at=None,
                updated_at=now,
            )
            self._attempts_failed(ids, changed, retry_count, error, now, dead=True)
        return changed

    def _attempts_failed(
        self,
        ids: Sequence[int],
        changed: int,
        retry_count: int,
        error: str,
        now: datetime.datetime,
        *,
        dead: bool,
    ) -> None:
        """The relay's failed attempts, in the write-back's transaction (``attempts.py``)."""
        if not changed:
            return
        if changed < len(ids):  # some leases were lost: only the rows written count
            ids = list(
                self.filter(
                    pk__in=list(ids), retry_count=retry_count, updated_at=truncate_to_millis(now)
                ).values_list("pk", flat=True)
            )
        attempts.record(
            self.db,
            [(pk, retry_count) for pk in ids],
            error=error,
            source=attempts.Source.RELAY,
            now=now,
            dead=dead,
        )

    def release(
        self,
        fence: Fence,
        ids: Sequence[int],
        now: datetime.datetime,
        *,
        error: str | None = None,
        due_at: datetime.datetime | None = None,
    ) -> int:
        """Give leased rows back without counting an attempt (due at ``due_at``, or now)."""
        values: dict[str, Any] = {"next_retry_at": due_at, "updated_at": now}
        if error is not None:
            values["last_error"] = clip_error(error)
        return self._fenced_update(fence, ids, **values)

    def _fenced_update(self, fence: Fence, ids: Sequence[int], **values: Any) -> int:
        """``UPDATE`` the rows among ``ids`` that ``fence`` still holds; return how many.

        A row is held while it is ``pending`` under the claim's lease *and* the fence
        table says the claim's token holds it (``fencing``: a lease is a time, and two
        claims within one second share it; a token is unique to its claim). The fence
        rows of the claim are deleted in the same statement or transaction.

        Rows are locked in ascending id order, before their fence rows. The consumer
        locks the rows of a chunk in id order too (``SELECT ... FOR UPDATE ORDER BY
        id``) and a claim locks a row before it writes its fence: with one order
        everywhere, none of them can deadlock.

        - PostgreSQL, one statement: a ``SELECT ... JOIN fence ... FOR UPDATE`` locks
          both rows; if a claim changed either meanwhile, PostgreSQL re-checks the
          join on their latest versions, so a stale token never passes.
        - MySQL/MariaDB, one transaction: the same locking read (``STRAIGHT_JOIN``
          keeps the outbox row first), then the ``UPDATE`` and ``DELETE`` by id.
        - SQLite has one writer at a time: the ``UPDATE`` checks the fence in a
          sub-select, then the ``DELETE``, in one transaction.

        Hand-written rather than the ORM's: a relay writes back every batch, and
        compiling ``id IN (...)`` with one parameter per id cost more CPU than the rest
        of the write-back (bench/relay_bench.py --phases). The ids go into the SQL as
        integers (``int()`` of each: nothing else can get in), the values through the
        fields' own adaptation, as ``update()`` would.
        """
        if not ids:
            return 0
        if self.query.where:
            raise TypeError("fenced updates apply to the table, not a filtered queryset")
        alias = self.db
        connection = connections[alias]
        quote = connection.ops.quote_name
        fields = {name: _concrete_field(name) for name in ("id", "status", "next_retry_at")}
        fields.update((name, _concrete_field(name)) for name in values)
        column = {name: quote(field.column or name) for name, field in fields.items()}
        assignments = ", ".join(f"{column[name]} = %s" for name in values)
        params = [
            fields[name].get_db_prep_save(value, connection) for name, value in values.items()
        ]
        held = [
            Status.PENDING.value,
            fields["next_retry_at"].get_db_prep_value(fence.lease, connection),
        ]
        token = fencing.token_param(connection, fence.token)
        table, pk = quote(OutboxMessage._meta.db_table), column["id"]
        status, lease = column["status"], column["next_retry_at"]
        wanted = id_list(ids)
        f_table, f_id, f_token, _ = fencing.names(connection)
        join = f"{table} t JOIN {f_table} f ON f.{f_id} = t.{pk}"
        mine = f"t.{pk} IN ({wanted}) AND f.{f_token} = %s"
        is_held = f"(t.{status} = %s AND t.{lease} = %s)"
        with transaction.mark_for_rollback_on_error(using=alias):
            if connection.vendor == "postgresql":
                sql = (
                    f"WITH mine AS (SELECT t.{pk} AS id, {is_held} AS held FROM {join} "
                    f"WHERE {mine} ORDER BY t.{pk} FOR UPDATE), "
                    f"dropped AS (DELETE FROM {f_table} WHERE {f_id} IN (SELECT id FROM mine)) "
                    f"UPDATE {table} SET {assignments} "
                    f"WHERE {pk} IN (SELECT id FROM mine WHERE held)"
                )
                with connection.cursor() as cursor:
                    cursor.execute(sql, [*held, token, *params])
                    return cursor.rowcount
            with transaction.atomic(using=alias, savepoint=False), connection.cursor() as cursor:
                if connection.vendor == "mysql":
                    # STRAIGHT_JOIN: the outbox row first, then its fence (one lock order)
                    straight = join.replace(" JOIN ", " STRAIGHT_JOIN ")
                    cursor.execute(
                        f"SELECT t.{pk}, {is_held} FROM {straight} "
                        f"WHERE {mine} ORDER BY t.{pk} FOR UPDATE",
                        [*held, token],
                    )
                    locked = cursor.fetchall()
                    yours = [pk_ for pk_, is_ in locked if is_]
                    if not locked:
                        return 0
                    changed = 0
                    if yours:
                        cursor.execute(
                            f"UPDATE {table} SET {assignments} WHERE {pk} IN ({id_list(yours)})",
                            params,
                        )
                        changed = cursor.rowcount
                    cursor.execute(
                        f"DELETE FROM {f_table} WHERE {f_id} IN "
                        f"({id_list(pk_ for pk_, _ in locked)})"
                    )
                    return changed
                cursor.execute(
                    f"UPDATE {table} SET {assignments} WHERE {pk} IN ({wanted}) "
                    f"AND {status} = %s AND {lease} = %s "
                    f"AND {pk} IN (SELECT {f_id} FROM {f_table} WHERE {f_token} = %s)",
                    [*params, *held, token],
                )
                changed = cursor.rowcount
                cursor.execute(
                    f"DELETE FROM {f_table} WHERE {f_token} = %s AND {f_id} IN ({wanted})",
                    [token],
                )
                return changed

    # Operators' transitions (the admin's actions). Rows a relay holds are left alone.
    # ``last_error`` stays what it was: who did what is in the admin's LogEntry history.
    # (Except ``cancel_scheduled``: a scheduled row has no error, and a dead row needs a
    # reason the Go side can read.)

    def retryable(self, now: datetime.datetime) -> OutboxMessageQuerySet:
        """The rows ``retry_now`` changes: dead, due or backing-off pending."""
        return self.dead() | self.due(now) | self.backing_off(now)

    def retry_now(self, now: datetime.datetime) -> int:
        """dead, due or backing-off pending -> pending, due now, with a fresh retry budget."""
        return self.retryable(now).update(
            status=Status.PENDING,
            retry_count=0,
            next_retry_at=retry_time(now, 0),
            updated_at=now,
        )

    def give_up_now(self, now: datetime.datetime) -> int:
        """pending rows no relay holds -> dead."""
        return (self.due(now) | self.backing_off(now)).update(
            status=Status.DEAD, next_retry_at=None, updated_at=now
        )

    def hold_until(self, pk: int, at: datetime.datetime) -> int:
        """pending, just written -> scheduled: not due before ``at`` (see ``scheduled_time``).

        ``publish_event(deliver_at=...)``, in the transaction of the ``INSERT``.
        """
        return self.filter(pk=pk, status=Status.PENDING, retry_count=0).update(next_retry_at=at)

    def send_now(self, now: datetime.datetime) -> int:
        """scheduled -> pending, due now; the retry budget is left as it is (unspent)."""
        due = truncate_to_millis(now)
        if due.microsecond == 0:
            due -= datetime.timedelta(milliseconds=1)
        return self.scheduled(now).update(next_retry_at=due, updated_at=now)

    def cancel_scheduled(self, now: datetime.datetime, error: str) -> int:
        """scheduled -> dead, with ``error`` (who cancelled) in ``last_error``."""
        return self.scheduled(now).update(
            status=Status.DEAD, next_retry_at=None, last_error=clip_error(error), updated_at=now
        )

    def deliver_again(self, now: datetime.datetime) -> int:
        """published or consumed -> pending, due now: their handlers will run again."""
        return (self.published() | self.consumed()).update(
            status=Status.PENDING,
            retry_count=0,
            next_retry_at=retry_time(now, 0),
            updated_at=now,
        )

    # ------------------------------------------------------------------ consumer side
    # Every status change the consumer makes (django_outbox/consumer/local.py). Each is
    # one conditional UPDATE fenced on a handleable status, on rows the consumer has
    # locked (``locked_for_handling``) in the same transaction.

    #: Statuses in which a row may still be handled. ``pending`` too: the consumer can
    #: get the record before the relay has written ``published`` back.
    handleable_statuses = (Status.PENDING, Status.PUBLISHED)

    def locked_for_handling(self, pks: Iterable[int]) -> OutboxMessageQuerySet:
        """The rows ``pks``, locked ``FOR UPDATE`` in ascending id order, in one query.

        The consumer's only way to lock outbox rows: one order everywhere, so two
        consumers, or a consumer and a relay writing back in id order, cannot deadlock.
        """
        return self.select_for_update().filter(pk__in=sorted(set(pks))).order_by("pk")

    def mark_consumed(self, pks: Iterable[int], now: datetime.datetime) -> int:
        """The rows whose handler succeeded: ``consumed``, in one ``UPDATE``."""
        now = truncate_to_millis(now)
        return self.filter(pk__in=list(pks), status__in=self.handleable_statuses).update(
            status=Status.CONSUMED,
            consumed_at=now,
            updated_at=now,
            # Sent it was: the relay's own write-back may not have landed yet, and it
            # never will (it is fenced on status='pending').
            # Truncated: Value() bypasses the field's own truncation.
            published_at=Coalesce(
                "published_at", Value(now, output_field=MillisecondDateTimeField())
            ),
        )

    def handler_failed(
        self, row: OutboxMessage, error: str, now: datetime.datetime, delay: float
    ) -> bool:
        """Count a failed handling of ``row`` (locked): back to pending after ``delay``
        seconds, or ``dead`` once ``max_retry`` is reached. Updates ``row``; True if dead."""
        retry_count = row.retry_count + 1
        dead = retry_count >= row.max_retry
        next_retry_at = None if dead else retry_time(now, delay)
        status = Status.DEAD if dead else Status.PENDING
        changed = self.filter(pk=row.pk, status__in=self.handleable_statuses).update(
            retry_count=retry_count,
            last_error=error,
            status=status,
            next_retry_at=next_retry_at,
            updated_at=now,
        )
        if changed:
            row.retry_count, row.last_error = retry_count, error
            row.status, row.next_retry_at = status, next_retry_at
            attempts.record(
                self.db,
                [(row.pk, retry_count)],
                error=error,
                source=attempts.Source.CONSUMER,
                now=now,
                dead=dead,
            )
        return dead

    def abandon(self, pk: int, error: str, now: datetime.datetime | None = None) -> int:
        """``dead`` with ``error``, if still handleable: no consumer will ever take it."""
        now = now or timezone.now()
        changed = self.filter(pk=pk, status__in=self.handleable_statuses).update(
            status=Status.DEAD, next_retry_at=None, last_error=error, updated_at=now
        )
        if changed:
            spent = self.filter(pk=pk).values_list("retry_count", flat=True).first() or 0
            attempts.record(
                self.db,
                [(pk, spent + 1)],
                error=error,
                source=attempts.Source.CONSUMER,
                now=now,
                dead=True,
            )
        return changed

    def send_again_later(self, pk: int, error: str, delay: float) -> int:
        """Back to the relay in ``delay`` seconds without spending a retry (no handler yet)."""
        now = timezone.now()
        return self.filter(pk=pk, status__in=self.handleable_statuses).update(
            status=Status.PENDING,
            next_retry_at=retry_time(now, delay),
            last_error=error,
            updated_at=now,
        )

    # ------------------------------------------------------------------ end of consumer side


_INSERTED = (
    "event_type",
    "topic",
    "message_key",
    "payload",
    "status",
    "retry_count",
    "max_retry",
    "created_at",
    "updated_at",
)
_insert_statements: dict[tuple[str, str, bool], tuple[str, list[models.Field], Any]] = {}


def id_list(ids: Iterable[int]) -> str:
    """``1,2,3``: ids as SQL integers (``int()`` of each: nothing else can get in)."""
    return ",".join(str(int(pk)) for pk in ids)


def _concrete_field(name: str) -> models.Field[Any, Any]:
    field = OutboxMessage._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _insert_statement(connection: Any, notify: bool) -> tuple[str, list[models.Field], Any]:
    """``INSERT`` of a pending row for ``connection``'s backend (built once per alias)."""
    notify = notify and connection.vendor == "postgresql"
    cache_key = (connection.alias, connection.vendor, notify)
    cached = _insert_statements.get(cache_key)
    if cached is not None:
        return cached
    meta = OutboxMessage._meta
    quote = connection.ops.quote_name
    fields = [meta.get_field(name) for name in _INSERTED]
    columns = ", ".join(quote(f.column) for f in fields)  # type: ignore[union-attr]
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
    )
    returning = None
    if notify:
        from django_outbox.wakeup import CHANNEL

        pk = quote(meta.pk.column)
        sql = (
            f"WITH inserted AS ({sql} RETURNING {pk}) "
            f"SELECT {pk}, pg_notify('{CHANNEL}', '') FROM inserted"
        )
        returning = ()
    elif connection.features.can_return_columns_from_insert:
        clause, returning = connection.ops.return_insert_columns([meta.pk])
        sql = f"{sql} {clause}"
    statement = (sql, fields, returning)
    _insert_statements[cache_key] = statement  # type: ignore[assignment]
    return statement  # type: ignore[return-value]


class OutboxMessage(models.Model):
    """One event waiting for, or done with, its trip through Kafka."""

    id = models.BigAutoField(_("id"), primary_key=True)
    event_type = models.CharField(
        _("event type"), max_length=64, db_column="biz_type", db_comment="事件类型"
    )
    topic = models.CharField(_("topic"), max_length=128, db_comment="Kafka Topic")
    message_key = models.CharField(_("message key"), max_length=128, db_comment="Kafka 消息键")
    payload = models.TextField(_("payload"), db_comment="业务载荷(JSON)")
    status = models.CharField(
        _("status"),
        max_length=32,
        choices=Status.choices,
        default=Status.PENDING,
        db_comment="pending/published/consumed/dead",
    )
    retry_count = models.BigIntegerField(
        _("retry count"), default=0, db_default=0, db_comment="已重试次数"
    )
    max_retry = models.BigIntegerField(
        _("max retry"), default=20, db_default=20, db_comment="最大重试次数"
    )
    next_retry_at = MillisecondDateTimeField(
        _("next retry at"), null=True, blank=True, db_comment="下次重试时间"
    )
    last_error = ShortTextField(_("last error"), null=True, blank=True, db_comment="最后一次错误")
    published_at = MillisecondDateTimeField(
        _("published at"), null=True, blank=True, db_comment="投递到 Kafka 时间"
    )
    consumed_at = MillisecondDateTimeField(
        _("consumed at"), null=True, blank=True, db_comment="消费完成时间"
    )
    created_at = MillisecondDateTimeField(_("created at"), null=True, auto_now_add=True)
    updated_at = MillisecondDateTimeField(_("updated at"), null=True, auto_now=True)

    objects = OutboxMessageQuerySet.as_manager()

    class Meta:
        db_table = "agent_outbox_messages"
        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        # Each admin action has its own permission (no table change: Django's auth rows only).
        permissions = [
            ("retry_outboxmessage", _("Can retry outbox messages now")),
            ("give_up_outboxmessage", _("Can give up outbox messages (mark dead)")),
            ("redeliver_outboxmessage", _("Can deliver published or consumed messages again")),
            ("release_key_outboxmessage", _("Can release the key a dead message holds")),
            ("send_now_outboxmessage", _("Can send scheduled outbox messages now")),
            ("cancel_outboxmessage", _("Can cancel scheduled outbox messages")),
        ]
        indexes = [
            models.Index(
                fields=["status", "next_retry_at", "event_type"], name="idx_outbox_status_next"
            )
        ]
        # PostgreSQL and SQLite also get idx_outbox_status_id (status, id, next_retry_at)
        # for the relay's claim, from migration 0007 (not declared here: MySQL/MariaDB
        # must not get it; docs/decisions/0002-claim-index.rst).

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk} ({self.status})"

    @property
    def event(self) -> Event:
        """The envelope stored in ``payload``, parsed (raises ``MalformedEvent``)."""
        from django_outbox.envelope import Event

        return Event.from_json(self.payload)
