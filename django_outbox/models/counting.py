"""Counting rows of a table that may hold millions of them, without reading them all.

Counts stop at ``COUNT_CAP`` (an index range scan of at most that many entries);
the size of a whole table comes from the database's own row estimate. The admin's
list and ``manage.py outbox_status`` count this way.
"""

from __future__ import annotations

from django.db import connections
from django.db.models import QuerySet

from django_outbox.models.outbox import OutboxMessage

#: Counts above this are shown as "more than 10,000".
COUNT_CAP = 10_000


def capped_count(queryset: QuerySet, cap: int = COUNT_CAP) -> int:
    """``min(queryset.count(), cap + 1)``, reading at most ``cap + 1`` rows."""
    return queryset.order_by()[: cap + 1].count()


def table_estimate(using: str, table: str = OutboxMessage._meta.db_table) -> int | None:
    """The database's own estimate of a table's row count, or ``None`` if it has none.

    PostgreSQL: ``pg_class.reltuples`` (kept by VACUUM/ANALYZE, -1 before the first).
    MySQL/MariaDB: ``information_schema.TABLES.TABLE_ROWS`` (InnoDB samples it; it
    may be off by tens of percent). SQLite keeps no estimate.
    """
    connection = connections[using]
    if connection.vendor == "postgresql":
        sql = "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)"
        params = [connection.ops.quote_name(table)]
    elif connection.vendor == "mysql":
        sql = (
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
        )
        params = [table]
    else:
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])
