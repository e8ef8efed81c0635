"""Locking a claim's rows without taking a row of a key ahead of an earlier one.

A claim locks its rows with ``FOR UPDATE SKIP LOCKED``. ``SKIP LOCKED`` passes over
a row another transaction holds, and that row may be the earlier row of a key whose
later row the same claim then locks. Taken as it came, the later row would leave
first: a key's order broken by someone else's lock.

Who holds a due row for a moment? On MariaDB, any locking statement that reads the
table through the ``(status, next_retry_at)`` index locks every row it *examines*
under REPEATABLE READ, not only the rows it keeps: a relay's claim whose plan went
that way held 700 to 5,000 due rows of other relays' buckets for the length of its
claim, and three relays broke key order in one run in eight (200-600 of 1,800 rows,
``tests/test_relay_buckets.py``). On either database: an operator's action in the
admin, or the Go service's own statements.

So, for a relay that owns its keys by bucket (``keep_order``):

- ``keep_key_order``: of the rows locked, a claim keeps only those whose key has no
  earlier candidate left behind (skipped, or no longer due), in this window of
  candidates or an earlier one. Rows without a key have no order and are always kept.
  MySQL/MariaDB: ``lock_due_ids``; PostgreSQL, inside the claim's one statement:
  ``ordered_claim_sql``.
- ``force_primary`` (MySQL/MariaDB): the locking read and the lease's ``UPDATE`` go
  through the primary key (``FORCE INDEX (PRIMARY)``), so a claim locks only its
  candidates, never another relay's rows, whatever plan the statistics suggest.

Relays without buckets (``OUTBOX_RELAY_BUCKETS = False``) send each key from several
relays anyway; holding keys back would only leave the work to one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models.sql.subqueries import UpdateQuery

if TYPE_CHECKING:
    from django_outbox.models.outbox import OutboxMessageQuerySet

#: How many more candidate ids than rows wanted a claim looks at.
CANDIDATES_PER_ROW = 4

#: How many windows of candidates a claim looks through while others hold every one.
WINDOWS = 4

#: A candidate row: (id, topic, key), in ascending id order.
Candidate = tuple[int, str, str]


def keep_key_order(
    candidates: Sequence[Candidate], locked: Iterable[int], held_back: set[tuple[str, str]]
) -> list[int]:
    """The ids of ``locked`` a claim may take, in id order, without breaking a key's order.

    ``candidates`` are what the claim looked at, in id order; ``locked`` the ids among
    them it got locks on. A keyed candidate it did not get holds its key back for the
    rest of the claim: ``held_back`` (topic, key) is updated in place and carried to
    the next window. A key with an empty name has no order: never held back.
    """
    got = set(locked)
    taken = []
    for pk, topic, key in candidates:
        if key == "":
            if pk in got:
                taken.append(pk)
            continue
        if pk in got and (topic, key) not in held_back:
            taken.append(pk)
        else:
            held_back.add((topic, key))
    return taken


def force_primary(sql: str, table: str) -> str:
    """``sql`` (a ``SELECT`` or single-table ``UPDATE`` of the quoted ``table``) read
    through the primary key: ``FORCE INDEX (PRIMARY)`` after the table's first mention."""
    for lead in (f"FROM {table} ", f"UPDATE {table} "):
        at = sql.find(lead)
        if at >= 0:
            end = at + len(lead) - 1
            return f"{sql[:end]} FORCE INDEX (PRIMARY){sql[end:]}"
    raise ValueError(f"no FROM or UPDATE of {table} in the statement: {sql[:200]}")


def lock_due_ids(
    alias: str, due: OutboxMessageQuerySet, batch_size: int, *, keep_order: bool = True
) -> list[int]:
    """Lock up to ``batch_size`` of the first due rows of ``due``, skipping rows others
    hold, and never a row of a key whose earlier row was skipped.

    Elsewhere than MySQL/MariaDB, one locking read. On MySQL/MariaDB a locking read
    locks every row it *examines*: the candidates' ids are read first without locks,
    and only those rows are locked, through the primary key, in id order,
    stopping at ``batch_size``. If others hold every candidate, the next candidates are
    tried, with the keys held back so far still held back.

    ``keep_order=False`` (relays that do not share the key space by bucket, where each
    key has no one sender anyway): every row locked is taken.
    """
    locking = due.select_for_update(skip_locked=True)
    connection = connections[alias]
    if connection.vendor != "mysql":
        return list(locking.values_list("id", flat=True)[:batch_size])
    window = batch_size * CANDIDATES_PER_ROW
    held_back: set[tuple[str, str]] = set()
    after = None
    for _ in range(WINDOWS):
        if after is None:  # the first window: ids only (the status index has them)
            ids = list(due.values_list("id", flat=True)[:window])
            rows: list[Candidate] | None = None
        else:  # others held every candidate so far: keys too, to hold theirs back
            rows = list(due.filter(pk__gt=after).values_list(*CANDIDATE_COLUMNS)[:window])
            ids = [row[0] for row in rows]
        if not ids:
            return []
        # a row of a key held back already is not locked at all (it would only take a
        # place in the batch and be dropped)
        wanted = ids if rows is None else [row[0] for row in rows if _free(row, held_back)]
        locked = _locked(connection, locking.with_ids(wanted), batch_size) if wanted else []
        if not keep_order:
            taken = locked
        elif rows is None and _none_passed(ids, locked):
            taken = locked  # the common case: the first rows, none passed over
        else:
            # every candidate not taken holds its key back, also one the locking read
            # never reached: a key's row in the next window must not overtake it
            if rows is None:
                rows = list(due.filter(pk__in=ids).values_list(*CANDIDATE_COLUMNS))
            taken = keep_key_order(rows, locked, held_back)
        if taken or len(ids) < window:
            return taken
        after = ids[-1]
    return []


CANDIDATE_COLUMNS = ("id", "topic", "message_key")


def _free(row: Candidate, held_back: set[tuple[str, str]]) -> bool:
    return row[2] == "" or (row[1], row[2]) not in held_back


def _none_passed(ids: list[int], locked: list[int]) -> bool:
    """Whether ``locked`` are the first candidates of ``ids`` (both in id order)."""
    return bool(locked) and ids[: len(locked)] == locked


def ordered_claim_sql(
    alias: str, due: OutboxMessageQuerySet, batch_size: int
) -> tuple[str, list[Any]]:
    """PostgreSQL: a ``SELECT`` of the ids a claim of ``batch_size`` rows of ``due`` may
    lease, for the claim's ``= ANY(ARRAY(...))``, and its parameters.

    The rows are locked as before (the first ``batch_size`` rows of ``due`` that no one
    else holds: ``FOR UPDATE SKIP LOCKED``). A keyed due row below the last one locked
    that was not locked was passed over: a later locked row of its key is left out.
    What was due is read again, without locks, below the last id locked only: on a
    claim that passed over nothing, the same rows it locked.
    """
    connection = connections[alias]
    columns = ("id", "topic", "message_key")
    locking, locking_params = (
        due.values_list(*columns)[:batch_size].query.get_compiler(alias).as_sql()
    )
    every, every_params = due.order_by().values_list(*columns).query.get_compiler(alias).as_sql()
    sql = (
        f"WITH locked (id, topic, mkey) AS MATERIALIZED ("
        f"{locking} {connection.ops.for_update_sql(skip_locked=True)}), "
        f"passed (id, topic, mkey) AS MATERIALIZED ("
        f"SELECT d.id, d.topic, d.mkey FROM ({every}) AS d (id, topic, mkey) "
        f"WHERE d.mkey <> '' AND d.id < (SELECT max(id) FROM locked) "
        f"AND d.id NOT IN (SELECT id FROM locked)) "
        f"SELECT l.id FROM locked l WHERE NOT EXISTS (SELECT 1 FROM passed p "
        f"WHERE p.topic = l.topic AND p.mkey = l.mkey AND p.id < l.id) ORDER BY l.id"
    )
    return sql, [*locking_params, *every_params]


def _locked(connection: Any, locking: OutboxMessageQuerySet, batch_size: int) -> list[int]:
    """Run the locking read of ``locking`` through the primary key; the ids it locked."""
    query = locking.values_list("id", flat=True)[:batch_size].query
    sql, params = query.get_compiler(connection.alias).as_sql()
    table = connection.ops.quote_name(locking.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(force_primary(sql, table), params)
        return [row[0] for row in cursor.fetchall()]


def update_locked(connection: Any, rows: OutboxMessageQuerySet, values: dict[str, Any]) -> int:
    """``rows.update(**values)`` for rows this transaction locked: through the primary
    key on MySQL/MariaDB (an ``UPDATE`` locks every row it examines too)."""
    if connection.vendor != "mysql":
        return rows.update(**values)
    query = rows.query.chain(UpdateQuery)
    assert isinstance(query, UpdateQuery)
    query.add_update_values(values)
    compiler = query.get_compiler(connection.alias)
    compiler.pre_sql_setup()  # what update() runs before compiling
    sql, params = compiler.as_sql()
    table = connection.ops.quote_name(rows.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(force_primary(sql, table), params)
        return int(cursor.rowcount)
