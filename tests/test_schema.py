"""The migrated table is the legacy table, column for column, on every database."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.db import connection

from tests.legacy import (
    GO_COMMENTS,
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
    if connection.vendor == "sqlite":
        # SQLite rebuilds a table to change a column (0004 changed nine comments, which
        # SQLite does not even keep) and the rebuilt ones go last; the Go service never
        # runs on SQLite, so only the set of columns matters there.
        assert sorted(columns) == sorted(expected_columns())
        return
    assert columns == expected_columns()


def test_the_composite_index_has_its_legacy_name_and_column_order():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    assert constraints[INDEX_NAME]["columns"] == INDEX_COLUMNS
    assert constraints[INDEX_NAME]["index"] is True
    assert constraints[INDEX_NAME]["unique"] is False
    # no extra constraints: the primary key, the legacy index and, on PostgreSQL and
    # SQLite, the relay's claim index (docs/decisions/0002-claim-index.rst)
    extra = {
        name for name, spec in constraints.items() if name != INDEX_NAME and not spec["primary_key"]
    }
    if connection.vendor == "mysql":
        assert extra == set()  # the table the Go service runs on gets no claim index
        return
    assert extra == {"idx_outbox_status_id"}
    claim_index = constraints["idx_outbox_status_id"]
    assert claim_index["columns"] == ["status", "id", "next_retry_at"]
    assert claim_index["index"] is True and claim_index["unique"] is False


def column_comments(table: str = TABLE) -> dict[str, str]:
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT column_name, column_comment FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                [table],
            )
        else:
            cursor.execute(
                "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                [table],
            )
        return {name: comment for name, comment in cursor.fetchall() if comment}


@pytest.mark.skipif("connection.vendor == 'sqlite'", reason="SQLite has no column comments")
def test_column_comments_are_the_go_models_own():
    # a different comment is rewritten by the Go service's next AutoMigrate
    assert column_comments() == GO_COMMENTS


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run in atomic()
def test_sqlmigrate_gives_the_go_service_a_table_it_can_use():
    sql = ""
    for migration in ("0001", "0004"):
        out = io.StringIO()
        call_command("sqlmigrate", "django_outbox", migration, stdout=out)
        sql += out.getvalue()
    assert TABLE in sql
    if connection.vendor == "mysql":
        for pattern in (
            r"`biz_type` varchar\(64\) NOT NULL COMMENT '事件类型'",
            r"`payload` longtext NOT NULL COMMENT '业务载荷\(JSON\)'",
            r"`last_error` text NULL COMMENT '最后一次错误'",
            r"`retry_count` bigint DEFAULT 0 NOT NULL COMMENT '已重试次数'",
            r"`max_retry` bigint DEFAULT 20 NOT NULL COMMENT '最大重试次数'",
            r"`next_retry_at` datetime\(3\) NULL COMMENT '下次重试时间'",
        ):
            assert re.search(pattern, sql), pattern
