"""The migrated table is the legacy table, column for column, on every database."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.db import connection

from tests.legacy import (
    INDEX_COLUMNS,
    INDEX_NAME,
    LEGACY_MYSQL_COLUMNS,
    POSTGRES_COLUMNS,
    SQLITE_COLUMNS,
)

pytestmark = pytest.mark.django_db
TABLE = "agent_outbox_messages"


def describe_columns(table: str = TABLE) -> list[tuple[str, str, bool, str | None]]:
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT column_name, column_type, is_nullable = 'YES', column_default "
                "FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s ORDER BY ordinal_position",
                [table],
            )
        elif connection.vendor == "postgresql":
            cursor.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
                "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum",
                [table],
            )
        else:
            cursor.execute(f"PRAGMA table_info({table})")
            return [
                (name, kind.lower(), not notnull, default)
                for _, name, kind, notnull, default, _ in cursor.fetchall()
            ]
        return [tuple(row) for row in cursor.fetchall()]  # type: ignore[misc]


def expected_columns():
    return {
        "mysql": LEGACY_MYSQL_COLUMNS,
        "postgresql": POSTGRES_COLUMNS,
        "sqlite": SQLITE_COLUMNS,
    }[connection.vendor]


def test_columns_types_nullability_and_defaults_match_the_legacy_table():
    columns = describe_columns()
    if connection.vendor == "postgresql":
        # the primary key's identity default is Django's business, not a legacy default
        columns = [(n, t, null, None if n == "id" else d) for n, t, null, d in columns]
    assert columns == expected_columns()


def test_the_composite_index_has_its_legacy_name_and_column_order():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    assert constraints[INDEX_NAME]["columns"] == INDEX_COLUMNS
    assert constraints[INDEX_NAME]["index"] is True
    assert constraints[INDEX_NAME]["unique"] is False
    # no extra constraints: the primary key and the legacy index, nothing else
    extra = {
        name for name, spec in constraints.items() if name != INDEX_NAME and not spec["primary_key"]
    }
    assert extra == set()


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in atomic()
def test_sqlmigrate_gives_the_go_service_a_table_it_can_use():
    out = io.StringIO()
    call_command("sqlmigrate", "django_outbox", "0001", stdout=out)
    sql = out.getvalue()
    assert TABLE in sql
    if connection.vendor == "mysql":
        for pattern in (
            r"`biz_type` varchar\(64\) +COMMENT 'event type' NOT NULL",
            r"`payload` longtext +COMMENT 'business payload \(JSON\)' NOT NULL",
            r"`last_error` text +COMMENT 'last error' NULL",
            r"`retry_count` bigint +COMMENT 'retries so far' DEFAULT 0 NOT NULL",
            r"`max_retry` bigint +COMMENT 'max retries' DEFAULT 20 NOT NULL",
            r"`next_retry_at` datetime\(3\) +COMMENT 'next retry time' NULL",
        ):
            assert re.search(pattern, sql), pattern
