"""Every state change of an outbox row: the named transitions of ``OutboxMessageQuerySet``.

A reader finds every transition of the shared table in this module, one mixin per
actor, composed in ``outbox``: ``WriterTransitions`` (``publish_event``),
``RelayTransitions`` (the relay's fenced write-backs), ``OperatorTransitions`` (the
admin's actions) and ``ConsumerTransitions``. Each writes only what it changes, in one
conditional ``UPDATE`` (or one fenced statement or transaction).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import DatabaseError, connections, models, transaction
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_outbox.fields import MillisecondDateTimeField, clip_error, truncate_to_millis
from django_outbox.models import attempts, fencing, publications
from django_outbox.models.queries import OutboxQueries, concrete_field, id_list
from django_outbox.models.statuses import Status, retry_time

if TYPE_CHECKING:
    from typing_extensions import Self

    from django_outbox.models.fencing import Fence
    from django_outbox.models.outbox import OutboxMessage


logger = logging.getLogger("django_outbox.relay")


class WriterTransitions(OutboxQueries):
    """(nothing) -> pending, and pending -> scheduled: what ``publish_event()`` writes."""

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
        sql, fields, returning = _insert_statement(self.model, connection, notify)
        params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
        with transaction.mark_for_rollback_on_error(using=alias):
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if returning is not None:
                    pk = connection.ops.fetch_returned_insert_columns(  # type: ignore[attr-defined]
                        cursor, returning
                    )[0]
                else:
                    table = self.model._meta.db_table
                    pk = connection.ops.last_insert_id(cursor, table, "id")
        message = self.model(id=pk, next_retry_at=None, last_error=None, **values)
        message._state.adding = False
        message._state.db = alias
        return message

    def hold_until(self, pk: int, at: datetime.datetime) -> int:
        """pending, just written -> scheduled: not due before ``at`` (see ``scheduled_time``).

        ``publish_event(deliver_at=...)``, in the transaction of the ``INSERT``.
        """
        return self.filter(pk=pk, status=Status.PENDING, retry_count=0).update(next_retry_at=at)


class RelayTransitions(OutboxQueries):
    """The relay's write-backs of what Kafka answered, all fenced.

    They change only the rows among ``ids`` that are still ``pending`` under the lease
    the relay took and held by its claim's token (``Claim.fence``, see ``fencing``).
    Whoever lost the lease (it ran out and another relay took the row, or a consumer
    already marked it consumed) changes nothing.
    """

    def mark_published(
        self,
        fence: Fence,
        ids: Sequence[int],
        now: datetime.datetime,
        *,
        sent: Sequence[tuple[str, publications.Position]] | None = None,
    ) -> int:
        """pending -> published: Kafka acknowledged these rows (never before that).

        ``sent``: per id, the topic and the (partition, offset) of Kafka's ack; the
        ``Publication`` entries of the rows changed are written after the fenced
        ``UPDATE`` (one ``INSERT``), in a statement of their own: a row's status is the
        contract, its entry a record for the admin, and joining them would only hold
        the ``UPDATE``'s row locks longer. An entry that cannot be written is logged, and
        the row stays published.
        """
        changed = self._mark_published(fence, ids, now)
        if not changed or sent is None:
            return changed
        pairs = list(zip(ids, sent, strict=True))
        if changed < len(ids):  # some leases were lost: only the rows written
            mine = set(self._written_at(ids, now, status=Status.PUBLISHED))
            pairs = [pair for pair in pairs if pair[0] in mine]
        try:
            with transaction.atomic(using=self.db):
                publications.record(
                    self.db, [(pk, topic, position) for pk, (topic, position) in pairs], now
                )
        except DatabaseError as exc:
            logger.warning(
                "outbox: the Kafka positions of %d published row(s) on %r were not recorded "
                "(%s: %s); the rows are published, their journey shows no partition/offset",
                len(pairs),
                self.db,
                type(exc).__name__,
                exc,
            )
        return changed

    def _mark_published(self, fence: Fence, ids: Sequence[int], now: datetime.datetime) -> int:
        return self._fenced_update(
            fence,
            ids,
            status=Status.PUBLISHED,
            published_at=now,
            next_retry_at=None,
            updated_at=now,
        )

    def _written_at(self, ids: Sequence[int], now: datetime.datetime, **match: Any) -> list[int]:
        """The rows among ``ids`` that a write-back at ``now`` changed (its transaction)."""
        rows = self.filter(pk__in=list(ids), updated_at=truncate_to_millis(now), **match)
        return list(rows.values_list("pk", flat=True))

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
            ids = self._written_at(ids, now, retry_count=retry_count)
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
        connection = connections[self.db]
        update = _FencedUpdate.build(self.model, connection, fence, ids, values)
        run = _FENCED_UPDATES.get(connection.vendor, _fenced_update_sqlite)
        with transaction.mark_for_rollback_on_error(using=self.db):
            return run(connection, update)


class OperatorTransitions(OutboxQueries):
    """Operators' transitions (the admin's actions). Rows a relay holds are left alone.

    ``last_error`` stays what it was: who did what is in the admin's LogEntry history.
    (Except ``cancel_scheduled``: a scheduled row has no error, and a dead row needs a
    reason the Go side can read.)
    """

    def retryable(self, now: datetime.datetime) -> Self:
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


class ConsumerTransitions(OutboxQueries):
    """Every status change the consumer makes (django_outbox/consumer/local.py).

    Each is one conditional UPDATE fenced on a handleable status, on rows the consumer
    has locked (``locked_for_handling``) in the same transaction.
    """

    #: Statuses in which a row may still be handled. ``pending`` too: the consumer can
    #: get the record before the relay has written ``published`` back.
    handleable_statuses = (Status.PENDING, Status.PUBLISHED)

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


def _insert_statement(
    model: type[OutboxMessage], connection: Any, notify: bool
) -> tuple[str, list[models.Field], Any]:
    """``INSERT`` of a pending row for ``connection``'s backend (built once per alias)."""
    notify = notify and connection.vendor == "postgresql"
    cache_key = (connection.alias, connection.vendor, notify)
    cached = _insert_statements.get(cache_key)
    if cached is not None:
        return cached
    meta = model._meta
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


class _FencedUpdate(NamedTuple):
    """The pieces of one fenced ``UPDATE``, quoted and adapted for its connection."""

    table: str
    pk: str
    status: str
    lease: str
    assignments: str
    #: The new values, adapted by their fields as ``update()`` would.
    params: list[Any]
    #: ``pending`` and the claim's lease: what ``is_held`` compares the row with.
    held: list[Any]
    token: Any
    wanted: str
    f_table: str
    f_id: str
    f_token: str
    join: str
    mine: str
    is_held: str

    @classmethod
    def build(
        cls,
        model: type[models.Model],
        connection: Any,
        fence: Fence,
        ids: Sequence[int],
        values: dict[str, Any],
    ) -> _FencedUpdate:
        quote = connection.ops.quote_name
        fields = {name: concrete_field(model, name) for name in ("id", "status", "next_retry_at")}
        fields.update((name, concrete_field(model, name)) for name in values)
        column = {name: quote(field.column or name) for name, field in fields.items()}
        table, pk = quote(model._meta.db_table), column["id"]
        status, lease = column["status"], column["next_retry_at"]
        wanted = id_list(ids)
        f_table, f_id, f_token, _ = fencing.names(connection)
        return cls(
            table=table,
            pk=pk,
            status=status,
            lease=lease,
            assignments=", ".join(f"{column[name]} = %s" for name in values),
            params=[
                fields[name].get_db_prep_save(value, connection) for name, value in values.items()
            ],
            held=[
                Status.PENDING.value,
                fields["next_retry_at"].get_db_prep_value(fence.lease, connection),
            ],
            token=fencing.token_param(connection, fence.token),
            wanted=wanted,
            f_table=f_table,
            f_id=f_id,
            f_token=f_token,
            join=f"{table} t JOIN {f_table} f ON f.{f_id} = t.{pk}",
            mine=f"t.{pk} IN ({wanted}) AND f.{f_token} = %s",
            is_held=f"(t.{status} = %s AND t.{lease} = %s)",
        )


def _fenced_update_postgresql(connection: Any, q: _FencedUpdate) -> int:
    """One statement: the locking read of rows and fences, the ``DELETE``, the ``UPDATE``."""
    sql = (
        f"WITH mine AS (SELECT t.{q.pk} AS id, {q.is_held} AS held FROM {q.join} "
        f"WHERE {q.mine} ORDER BY t.{q.pk} FOR UPDATE), "
        f"dropped AS (DELETE FROM {q.f_table} WHERE {q.f_id} IN (SELECT id FROM mine)) "
        f"UPDATE {q.table} SET {q.assignments} "
        f"WHERE {q.pk} IN (SELECT id FROM mine WHERE held)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*q.held, q.token, *q.params])
        return int(cursor.rowcount)


def _fenced_update_mysql(connection: Any, q: _FencedUpdate) -> int:
    """One transaction: the locking read, then the ``UPDATE`` and ``DELETE`` by id."""
    # STRAIGHT_JOIN: the outbox row first, then its fence (one lock order)
    straight = q.join.replace(" JOIN ", " STRAIGHT_JOIN ")
    with (
        transaction.atomic(using=connection.alias, savepoint=False),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            f"SELECT t.{q.pk}, {q.is_held} FROM {straight} "
            f"WHERE {q.mine} ORDER BY t.{q.pk} FOR UPDATE",
            [*q.held, q.token],
        )
        locked = cursor.fetchall()
        yours = [pk_ for pk_, is_ in locked if is_]
        if not locked:
            return 0
        changed = 0
        if yours:
            cursor.execute(
                f"UPDATE {q.table} SET {q.assignments} WHERE {q.pk} IN ({id_list(yours)})",
                q.params,
            )
            changed = cursor.rowcount
        cursor.execute(
            f"DELETE FROM {q.f_table} WHERE {q.f_id} IN ({id_list(pk_ for pk_, _ in locked)})"
        )
        return int(changed)


def _fenced_update_sqlite(connection: Any, q: _FencedUpdate) -> int:
    """One transaction (one writer at a time): the ``UPDATE`` checks the fence in a
    sub-select, then the ``DELETE``."""
    with (
        transaction.atomic(using=connection.alias, savepoint=False),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            f"UPDATE {q.table} SET {q.assignments} WHERE {q.pk} IN ({q.wanted}) "
            f"AND {q.status} = %s AND {q.lease} = %s "
            f"AND {q.pk} IN (SELECT {q.f_id} FROM {q.f_table} WHERE {q.f_token} = %s)",
            [*q.params, *q.held, q.token],
        )
        changed = cursor.rowcount
        cursor.execute(
            f"DELETE FROM {q.f_table} WHERE {q.f_token} = %s AND {q.f_id} IN ({q.wanted})",
            [q.token],
        )
        return int(changed)


#: The fenced ``UPDATE`` by database vendor (MariaDB's is "mysql"); any other: SQLite's.
_FENCED_UPDATES = {
    "postgresql": _fenced_update_postgresql,
    "mysql": _fenced_update_mysql,
    "sqlite": _fenced_update_sqlite,
}
