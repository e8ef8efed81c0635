"""Large outbox tables for the benchmarks, seeded inside the database server.

PostgreSQL generates the rows with ``generate_series``, MariaDB with its sequence
engine (``seq_1_to_N``), SQLite with a recursive CTE; then ANALYZE. Row ``i`` (1 to
``rows``) was created ``(rows - i) * 2.592`` seconds ago (1,000,000 rows span 30
days, in id order), so the newest rows are as old at every table size. Eight event
types, three topics, ~300-byte envelopes, keys mostly the event id (every tenth row
``conversation-N``). Two mixes of statuses:

* ``live=None`` (the admin's mix): 96 % consumed, 1 % published, 1 % dead, 2 %
  pending (ready, retry due, backing off, in flight), spread over the whole table;
* ``live=N`` (a table that grows by its history only): the newest ``N`` rows are the
  work in hand (half published, half pending in those four kinds), the 100 rows
  before them dead, all older rows consumed. Only the consumed history differs
  between a 10,000-row and a 1,000,000-row table.

Usage: ``create_database(url)`` before ``django.setup()``, then ``seed(rows, ...)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

#: Seconds between the creation of two consecutive rows.
SPACING = 2.592
#: Dead rows just before the live block of the ``live=N`` mix.
DEAD_ROWS = 100


def kind_sql(rows: int, live: int | None) -> str:
    """The SQL expression (portable) naming what row ``i`` is."""
    if live is None:
        return """CASE WHEN i % 100 = 0 THEN 'dead' WHEN i % 100 = 1 THEN 'published'
            WHEN i % 100 = 2 AND i % 200 < 100 THEN 'ready'
            WHEN i % 100 = 2 THEN 'retry_due'
            WHEN i % 100 = 3 AND i % 200 < 100 THEN 'in_flight'
            WHEN i % 100 = 3 THEN 'backing_off' ELSE 'consumed' END"""
    first_live = rows - live
    return f"""CASE WHEN i > {first_live} AND i % 10 < 5 THEN 'published'
            WHEN i > {first_live} AND i % 10 IN (5, 6) THEN 'ready'
            WHEN i > {first_live} AND i % 10 = 7 THEN 'retry_due'
            WHEN i > {first_live} AND i % 10 = 8 THEN 'in_flight'
            WHEN i > {first_live} THEN 'backing_off'
            WHEN i > {first_live - DEAD_ROWS} THEN 'dead' ELSE 'consumed' END"""


# What the kind of a row means for each column; {now}, {created} and the rest are
# filled in per database below. Dead and backing-off rows carry one of 11 errors (four
# kinds, one a handler's traceback in seven variants), which the admin's failure groups
# (admin_failures.py) read; {group} spreads them over dead rows of both mixes.
COLUMNS = """
    {type_prefix}, {topic_prefix},
    CASE WHEN i % 10 = 0 THEN {conversation_key} ELSE eid END,
    {payload},
    CASE WHEN kind IN ('dead', 'published', 'consumed') THEN kind ELSE 'pending' END,
    CASE WHEN kind = 'dead' THEN 20 WHEN kind IN ('retry_due', 'backing_off') THEN 1 ELSE 0 END,
    20,
    CASE WHEN kind = 'retry_due' THEN {hour_ago}
         WHEN kind = 'in_flight' THEN {lease}
         WHEN kind = 'backing_off' THEN {day_later} END,
    CASE WHEN kind = 'dead' THEN CASE ({group}) % 4
             WHEN 0 THEN 'KafkaConnectionError: broker unavailable'
             WHEN 1 THEN 'KafkaTimeoutError: Batch for TopicPartition expired
after 30.0 s'
             WHEN 2 THEN {traceback}
             ELSE 'MessageSizeTooLargeError: the record is too large' END
         WHEN kind = 'backing_off' THEN 'KafkaTimeoutError: no ack within 30.0s' END,
    CASE WHEN kind IN ('published', 'consumed') THEN created END,
    CASE WHEN kind = 'consumed' THEN created END,
    created, created
"""

TRACEBACK = """'Traceback (most recent call last):
  File "h.py", line 3, in on
    raise ValueError(x)
ValueError: bad amount '"""

INSERT = """
INSERT INTO agent_outbox_messages (biz_type, topic, message_key, payload, status, retry_count,
    max_retry, next_retry_at, last_error, published_at, consumed_at, created_at, updated_at)
"""

POSTGRESQL = dict(
    type_prefix="'bench.type' || (i % 8)",
    topic_prefix="'bench.topic' || (i % 3)",
    conversation_key="'conversation-' || (i % 5000)",
    group="i / 100 + i",
    traceback=TRACEBACK + " || ((i / 100) % 7)",
    payload="""'{"event_id":"' || eid || '","event_type":"bench.type' || (i % 8)
        || '","version":1,"occurred_at":"2026-11-01T00:00:00.000000Z","key":"k","headers":{},'
        || '"data":{"text":"' || repeat('x', 120) || '"}}'""",
    hour_ago="now() - interval '1 hour' + interval '0.123 second'",
    lease="date_trunc('second', now()) + interval '1 day'",
    day_later="now() + interval '1 day 0.123 second'",
    source="""(SELECT i, kind, md5(i::text)::uuid::text AS eid,
             date_trunc('milliseconds', now() - ({rows} - i) * interval '{spacing} second')
                 AS created
      FROM (SELECT i, {kind} AS kind FROM generate_series(1, {rows}) AS i) AS k) AS s""",
)

MYSQL = dict(
    type_prefix="CONCAT('bench.type', i % 8)",
    topic_prefix="CONCAT('bench.topic', i % 3)",
    conversation_key="CONCAT('conversation-', i % 5000)",
    group="i DIV 100 + i",
    traceback="CONCAT(" + TRACEBACK + ", (i DIV 100) % 7)",
    payload="""CONCAT('{"event_id":"', eid, '","event_type":"bench.type', i % 8,
        '","version":1,"occurred_at":"2026-11-01T00:00:00.000000Z","key":"k","headers":{},',
        '"data":{"text":"', REPEAT('x', 120), '"}}')""",
    hour_ago="NOW(3) - INTERVAL 1 HOUR + INTERVAL 123000 MICROSECOND",
    lease="CAST(NOW() AS DATETIME) + INTERVAL 1 DAY",
    day_later="NOW(3) + INTERVAL 1 DAY + INTERVAL 123000 MICROSECOND",
    source="""(SELECT i, kind,
             LOWER(CONCAT_WS('-', SUBSTR(MD5(i), 1, 8), SUBSTR(MD5(i), 9, 4),
                   SUBSTR(MD5(i), 13, 4), SUBSTR(MD5(i), 17, 4), SUBSTR(MD5(i), 21, 12)))
                 AS eid,
             NOW(3) - INTERVAL ROUND(({rows} - i) * {spacing} * 1000) * 1000 MICROSECOND
                 AS created
      FROM (SELECT i, {kind} AS kind FROM (SELECT seq AS i FROM seq_1_to_{rows}) AS n) AS k
      ) AS s""",
)

# Django stores SQLite datetimes as text, "YYYY-MM-DD HH:MM:SS.ffffff" (no fraction
# when it is zero): the seed writes the same shapes, so comparisons and the in-flight
# test (a whole-second lease) behave as with rows Django wrote.
SQLITE_TIME = "strftime('%Y-%m-%d %H:%M:%f', 'now', {offset}) || '000'"
SQLITE = dict(
    type_prefix="'bench.type' || (i % 8)",
    topic_prefix="'bench.topic' || (i % 3)",
    conversation_key="'conversation-' || (i % 5000)",
    group="i / 100 + i",
    traceback=TRACEBACK + " || ((i / 100) % 7)",
    payload="""'{"event_id":"' || eid || '","event_type":"bench.type' || (i % 8)
        || '","version":1,"occurred_at":"2026-11-01T00:00:00.000000Z","key":"k","headers":{},'
        || '"data":{"text":"' || replace(printf('%120s', ''), ' ', 'x') || '"}}'""",
    hour_ago=SQLITE_TIME.format(offset="'-3599.877 seconds'"),
    lease="strftime('%Y-%m-%d %H:%M:%S', 'now', '+1 day')",
    day_later=SQLITE_TIME.format(offset="'+86400.123 seconds'"),
    source="""(SELECT i, kind, printf('00000000-0000-4000-8000-%012x', i) AS eid,
             """
    + SQLITE_TIME.format(offset="'-' || (({rows} - i) * {spacing}) || ' seconds'")
    + """ AS created
      FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
            SELECT i, {kind} AS kind FROM n) AS k) AS s""",
)


def seed_sql(vendor: str, rows: int, live: int | None) -> str:
    """The one ``INSERT ... SELECT`` that fills the table on ``vendor``."""
    dialect = {"postgresql": POSTGRESQL, "mysql": MYSQL, "sqlite": SQLITE}[vendor]
    source = dialect["source"].format(
        rows=int(rows), spacing=SPACING, kind=kind_sql(int(rows), live)
    )
    columns = COLUMNS.format(**{k: v for k, v in dialect.items() if k != "source"})
    return f"{INSERT} SELECT {columns} FROM {source}"


def analyze(connection: Any) -> None:
    """Fresh planner statistics for the table just filled, as autovacuum would give."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE agent_outbox_messages")
        elif connection.vendor == "mysql":
            cursor.execute("ANALYZE TABLE agent_outbox_messages")
            cursor.fetchall()
        else:
            cursor.execute("ANALYZE")


def create_database(url: str) -> None:
    """Create the bench database if the server lacks it (Django cannot connect otherwise)."""
    parts = urlparse(url)
    name = parts.path.lstrip("/")
    if parts.scheme.startswith("postgres"):
        import psycopg

        with psycopg.connect(
            host=parts.hostname,
            port=parts.port or 5432,
            user=parts.username,
            password=parts.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    elif parts.scheme.startswith("mysql"):
        import MySQLdb

        conn = MySQLdb.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password,
        )
        conn.cursor().execute(
            f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_unicode_ci"
        )
        conn.close()
    elif not parts.scheme.startswith("sqlite"):
        sys.exit(f"DATABASE_URL: PostgreSQL, MariaDB or SQLite, not {parts.scheme!r}")


def seeded(using: str, rows: int, live: int | None) -> bool:
    """Whether the table of ``using`` already holds this seed (count and live rows)."""
    from django_outbox.models import OutboxMessage, Status

    table = OutboxMessage.objects.using(using)
    if table.count() != rows:
        return False
    if live is None:
        return True
    return table.exclude(status__in=[Status.CONSUMED, Status.DEAD]).count() == live


def seed(
    rows: int, reseed: bool = False, *, live: int | None = None, using: str = "default"
) -> None:
    """Migrate database ``using`` and fill its outbox with ``rows`` rows (see the module)."""
    from django.core.management import call_command
    from django.db import connections

    from django_outbox.models import OutboxMessage

    call_command("migrate", "django_outbox", database=using, verbosity=0)
    call_command("migrate", database=using, verbosity=0)
    if not reseed and seeded(using, rows, live):
        print(f"{using}: {rows:,} rows already there")
        return
    started = time.perf_counter()
    connection = connections[using]
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE TABLE {table} RESTART IDENTITY")
        elif connection.vendor == "mysql":
            cursor.execute(f"TRUNCATE TABLE {table}")
        else:
            cursor.execute(f"DELETE FROM {table}")
            cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table.strip('"')])
        cursor.execute(seed_sql(connection.vendor, rows, live))
    analyze(connection)
    print(f"{using}: seeded {rows:,} rows in {time.perf_counter() - started:.1f} s")


@contextlib.contextmanager
def bench_database(*, prefix: str = "bench", on_sqlite: str | None = None) -> Iterator[str]:
    """A throw-away test database for a bench that writes (relay, relays, publish,
    takeovers), apart from the test suite's, dropped after.

    PostgreSQL or MariaDB: ``<prefix>_<name>`` on the server of ``DATABASE_URL``.
    SQLite: a file in a temporary directory of its own (WAL, as testproject/settings.py
    sets it), removed after; ``SystemExit(on_sqlite)`` instead when ``on_sqlite`` is
    given (several worker processes need a server). The broker is
    ``KAFKA_BOOTSTRAP_SERVERS``; relay wake-ups are off (the workers find rows by
    polling; a bench that times them turns them on itself). Yields the bootstrap address.
    """
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    config = settings.DATABASES["default"]
    test = config.setdefault("TEST", {})
    scratch: Path | None = None
    if "sqlite" in config["ENGINE"]:
        if on_sqlite is not None:
            raise SystemExit(on_sqlite)
        scratch = Path(tempfile.mkdtemp(prefix="outbox-bench-"))
        test["NAME"] = str(scratch / "bench.sqlite3")
    else:
        test["NAME"] = f"{prefix}_{config['NAME']}"
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = bootstrap
    settings.OUTBOX_WAKE_RELAY = False
    old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    try:
        yield bootstrap
    finally:
        connection.close()
        teardown_databases(old_config, verbosity=0)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
