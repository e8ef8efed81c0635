"""The inbox's two statements on the consumer's hot path, a round trip each.

``insert_entries`` writes a chunk's entries in one ``INSERT``: on PostgreSQL from
``unnest()`` of one array per column (seven parameters whatever the chunk's size),
elsewhere as multi-row ``VALUES``, in batches the backend's parameter limit allows
(SQLite's 999). Django's ``bulk_create`` built a model instance and prepared each of
its fields per entry: 21 µs of CPU per entry on PostgreSQL and 26 on MariaDB,
against 5 and 6 here (``bench/consumer_bench.py`` shows the consumer's floor).

``handled_ids`` reads which of a chunk's event ids a group has handled: one array
parameter on PostgreSQL (``= ANY``), the ORM's ``IN`` elsewhere.

Each value is prepared by its model field (``get_db_prep_save``), once per chunk
where it is the same for every entry: the rows are the ones ``bulk_create`` wrote.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from django.db import connections
from django.utils import timezone

from django_outbox.models.inbox import InboxEntry

#: The columns written, in the order of the statement's values.
COLUMNS = ("consumer_group", "event_id", "event_type", "topic", "partition", "offset", "handled_at")


class Entry(NamedTuple):
    """One event a group handled: the inbox's row, less what the chunk shares."""

    event_id: uuid.UUID
    event_type: str
    topic: str
    partition: int
    offset: int


def insert_entries(
    alias: str, group: str, entries: Sequence[Entry], now: datetime.datetime | None = None
) -> None:
    """Insert ``entries`` for ``group`` on ``alias``: one statement (a few on SQLite).

    Raises ``IntegrityError`` when one is there already, as ``bulk_create`` did; on
    PostgreSQL the transaction is then unusable up to the caller's savepoint.
    """
    if not entries:
        return
    connection = connections[alias]
    meta = InboxEntry._meta
    fields = {field.name: field for field in meta.concrete_fields}
    head = (
        f"INSERT INTO {_quoted(connection, meta.db_table)} "
        f"({', '.join(_column(connection, name) for name in COLUMNS)})"
    )
    shared_group = fields["consumer_group"].get_db_prep_save(group, connection)
    handled_at = fields["handled_at"].get_db_prep_save(now or timezone.now(), connection)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"{head} SELECT %s, e::uuid, y, t, p, o, %s FROM unnest("
                "%s::text[], %s::text[], %s::text[], %s::integer[], %s::bigint[]"
                ") AS entry(e, y, t, p, o)",
                [
                    shared_group,
                    handled_at,
                    [str(entry.event_id) for entry in entries],
                    [entry.event_type for entry in entries],
                    [entry.topic for entry in entries],
                    [entry.partition for entry in entries],
                    [entry.offset for entry in entries],
                ],
            )
            return
        prepare_id = fields["event_id"].get_db_prep_save
        size = max(1, connection.ops.bulk_batch_size(list(COLUMNS), entries))
        row = f"({', '.join(['%s'] * len(COLUMNS))})"
        for first in range(0, len(entries), size):
            batch = entries[first : first + size]
            params: list[Any] = []
            for entry in batch:
                params += (
                    shared_group,
                    prepare_id(entry.event_id, connection),
                    entry.event_type,
                    entry.topic,
                    entry.partition,
                    entry.offset,
                    handled_at,
                )
            cursor.execute(f"{head} VALUES {', '.join([row] * len(batch))}", params)


def handled_ids(alias: str, group: str, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``event_ids`` that ``group`` has an entry for on ``alias`` (one query)."""
    if not event_ids:
        return set()
    connection = connections[alias]
    if connection.vendor != "postgresql":
        entries = InboxEntry.objects.using(alias).filter(
            consumer_group=group, event_id__in=set(event_ids)
        )
        return set(entries.values_list("event_id", flat=True))
    event_id = _column(connection, "event_id")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {event_id} FROM {_quoted(connection, InboxEntry._meta.db_table)} "
            f"WHERE {_column(connection, 'consumer_group')} = %s AND {event_id} = ANY(%s::uuid[])",
            [group, sorted({str(event_id) for event_id in event_ids})],
        )
        return {
            value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
            for (value,) in cursor.fetchall()
        }


def _quoted(connection: Any, name: str) -> str:
    return str(connection.ops.quote_name(name))


def _column(connection: Any, name: str) -> str:
    """The quoted column of ``InboxEntry``'s field ``name``."""
    field = InboxEntry._meta.get_field(name)
    return _quoted(connection, str(getattr(field, "column", None) or name))
