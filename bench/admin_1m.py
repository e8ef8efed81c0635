"""Server time of the outbox admin on a table of 1,000,000 rows.

Usage (the database is created if missing; use one of its own, never a test database)::

    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_admin_1m \\
        python bench/admin_1m.py [--rows 1000000] [--runs 5] [--reseed]
    DATABASE_URL=mysql://outbox:outbox@127.0.0.1:3306/outbox_admin_1m python bench/admin_1m.py

Seeding runs inside the server (PostgreSQL ``generate_series``, MariaDB's sequence
engine ``seq_1_to_N``), then ANALYZE. The mix: 96 % consumed, 1 % published, 1 %
dead, 2 % pending (ready, backing off, in flight), eight event types, three topics,
keys mostly the event id, creation times spread over 30 days in id order. Dead and
backing-off rows carry one of 11 errors (four kinds, one a handler's traceback), which
the failure groups (``admin_failures.py``) read.

Each page is requested ``--runs`` times through Django's test client as a logged-in
superuser; the figures are wall-clock server times (request in, response rendered)
in milliseconds: min / median / max, the median time spent in SQL (the part that
grows with the table; the rest is rendering 100 rows) and the number of queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

TYPES = [f"bench.type{n}" for n in range(8)]

PG_SEED = """
INSERT INTO agent_outbox_messages (biz_type, topic, message_key, payload, status, retry_count,
    max_retry, next_retry_at, last_error, published_at, consumed_at, created_at, updated_at)
SELECT 'bench.type' || (i % 8), 'bench.topic' || (i % 3),
    CASE WHEN i % 10 = 0 THEN 'conversation-' || (i % 5000) ELSE eid END,
    '{"event_id":"' || eid || '","event_type":"bench.type' || (i % 8)
        || '","version":1,"occurred_at":"2026-11-01T00:00:00.000000Z","key":"k","headers":{},'
        || '"data":{"text":"' || repeat('x', 120) || '"}}',
    CASE WHEN i % 100 = 0 THEN 'dead' WHEN i % 100 = 1 THEN 'published'
         WHEN i % 100 IN (2, 3) THEN 'pending' ELSE 'consumed' END,
    CASE WHEN i % 100 = 0 THEN 20 ELSE 0 END, 20,
    CASE WHEN i % 100 = 2 AND i % 200 < 100 THEN NULL
         WHEN i % 100 = 2 THEN now() - interval '1 hour' + interval '0.123 second'
         WHEN i % 100 = 3 AND i % 200 < 100 THEN date_trunc('second', now()) + interval '1 day'
         WHEN i % 100 = 3 THEN now() + interval '1 day 0.123 second' END,
    CASE WHEN i % 100 = 0 THEN CASE (i / 100) % 4
             WHEN 0 THEN 'KafkaConnectionError: broker unavailable'
             WHEN 1 THEN E'KafkaTimeoutError: Batch for TopicPartition expired\nafter 30.0 s'
             WHEN 2 THEN E'Traceback (most recent call last):\n  File "h.py", line 3, in on\n'
                         || E'    raise ValueError(x)\nValueError: bad amount ' || ((i / 100) % 7)
             ELSE 'MessageSizeTooLargeError: the record is too large' END
         WHEN i % 100 = 3 AND i % 200 >= 100 THEN 'KafkaTimeoutError: no ack within 30.0s' END,
    CASE WHEN i % 100 NOT IN (0, 2, 3) THEN created END,
    CASE WHEN i % 100 > 3 THEN created END,
    created, created
FROM (SELECT i, md5(i::text)::uuid::text AS eid,
             now() - ({rows} - i) * interval '2592 millisecond' AS created
      FROM generate_series(1, {rows}) AS i) AS s
"""

MYSQL_SEED = """
INSERT INTO agent_outbox_messages (biz_type, topic, message_key, payload, status, retry_count,
    max_retry, next_retry_at, last_error, published_at, consumed_at, created_at, updated_at)
SELECT CONCAT('bench.type', i % 8), CONCAT('bench.topic', i % 3),
    IF(i % 10 = 0, CONCAT('conversation-', i % 5000), eid),
    CONCAT('{"event_id":"', eid, '","event_type":"bench.type', i % 8,
        '","version":1,"occurred_at":"2026-11-01T00:00:00.000000Z","key":"k","headers":{},',
        '"data":{"text":"', REPEAT('x', 120), '"}}'),
    CASE WHEN i % 100 = 0 THEN 'dead' WHEN i % 100 = 1 THEN 'published'
         WHEN i % 100 IN (2, 3) THEN 'pending' ELSE 'consumed' END,
    IF(i % 100 = 0, 20, 0), 20,
    CASE WHEN i % 100 = 2 AND i % 200 < 100 THEN NULL
         WHEN i % 100 = 2 THEN NOW(3) - INTERVAL 1 HOUR + INTERVAL 123000 MICROSECOND
         WHEN i % 100 = 3 AND i % 200 < 100 THEN CAST(NOW() AS DATETIME) + INTERVAL 1 DAY
         WHEN i % 100 = 3 THEN NOW(3) + INTERVAL 1 DAY + INTERVAL 123000 MICROSECOND END,
    CASE WHEN i % 100 = 0 THEN CASE (i DIV 100) % 4
             WHEN 0 THEN 'KafkaConnectionError: broker unavailable'
             WHEN 1 THEN 'KafkaTimeoutError: Batch for TopicPartition expired\nafter 30.0 s'
             WHEN 2 THEN CONCAT('Traceback (most recent call last):\n',
                                '  File "h.py", line 3, in on\n    raise ValueError(x)\n',
                                'ValueError: bad amount ', (i DIV 100) % 7)
             ELSE 'MessageSizeTooLargeError: the record is too large' END
         WHEN i % 100 = 3 AND i % 200 >= 100 THEN 'KafkaTimeoutError: no ack within 30.0s' END,
    IF(i % 100 NOT IN (0, 2, 3), created, NULL),
    IF(i % 100 > 3, created, NULL),
    created, created
FROM (SELECT seq AS i,
             LOWER(CONCAT_WS('-', SUBSTR(MD5(seq), 1, 8), SUBSTR(MD5(seq), 9, 4),
                   SUBSTR(MD5(seq), 13, 4), SUBSTR(MD5(seq), 17, 4), SUBSTR(MD5(seq), 21, 12)))
                 AS eid,
             NOW(3) - INTERVAL (({rows} - seq) * 2592000) MICROSECOND AS created
      FROM seq_1_to_{rows}) AS s
"""


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
    else:
        sys.exit("DATABASE_URL must point at PostgreSQL or MariaDB; the bench is about them.")


def seed(rows: int, reseed: bool) -> None:
    from django.core.management import call_command
    from django.db import connection

    from django_outbox.models import OutboxMessage

    call_command("migrate", "django_outbox", verbosity=0)
    call_command("migrate", verbosity=0)
    have = OutboxMessage.objects.count()
    if have == rows and not reseed:
        print(f"{have:,} rows already there")
        return
    started = time.perf_counter()
    with connection.cursor() as cursor:
        table = OutboxMessage._meta.db_table
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE TABLE {table} RESTART IDENTITY")
        else:
            cursor.execute(f"TRUNCATE TABLE {table}")
        sql = PG_SEED if connection.vendor == "postgresql" else MYSQL_SEED
        cursor.execute(sql.replace("{rows}", str(int(rows))))
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {OutboxMessage._meta.db_table}")
        else:
            cursor.execute(f"ANALYZE TABLE {OutboxMessage._meta.db_table}")
            cursor.fetchall()
    print(f"seeded {rows:,} rows in {time.perf_counter() - started:.1f} s")


def measure(label: str, runs: int, call: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, db_times = [], []
    queries = 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        queries = len(captured)
        db_times.append(sum(float(query["time"]) for query in captured.captured_queries) * 1000)
    print(
        f"  {label:<40} {min(times):8.1f} {statistics.median(times):8.1f} {max(times):8.1f}"
        f" {statistics.median(db_times):8.1f} {queries:4d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reseed", action="store_true")
    options = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    create_database(url)

    import django

    django.setup()
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client, RequestFactory
    from django.urls import reverse

    from django_outbox.admin import OutboxMessageAdmin
    from django_outbox.admin_counts import OutboxPaginator, summary
    from django_outbox.admin_failures import group_failures
    from django_outbox.models import OutboxMessage

    seed(options.rows, options.reseed)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", password="bench"
    )
    client = Client()
    client.force_login(user)
    changelist = reverse("admin:django_outbox_outboxmessage_changelist")
    # Row i of the seed has the key "conversation-..." when i % 10 == 0, its event id if not.
    first = OutboxMessage.objects.order_by("pk").values_list("pk", flat=True)[0]
    keyed = OutboxMessage.objects.get(pk=first + options.rows // 2)
    custom_key = OutboxMessage.objects.get(pk=first + options.rows // 2 + 9)
    assert custom_key.message_key.startswith("conversation-"), custom_key.message_key

    def page(path: str, params: dict[str, str] | None = None) -> Any:
        def call() -> None:
            response = client.get(path, params or {})
            assert response.status_code == 200, (path, params, response.status_code)

        return call

    # The same admin with a date hierarchy on created_at, to show what that costs.
    dated = OutboxMessageAdmin(OutboxMessage, admin.site)
    dated.date_hierarchy = "created_at"
    factory = RequestFactory()

    def dated_list(params: dict[str, str]) -> Any:
        def call() -> None:
            request = factory.get(changelist, params)
            request.user = user
            request.session = {}  # type: ignore[assignment]
            request._messages = None  # type: ignore[attr-defined]
            dated.changelist_view(request).render()

        return call

    print(
        f"\n{connection.vendor} {connection.Database.__name__}, "
        f"{OutboxMessage.objects.count():,} rows, {options.runs} runs, ms:"
    )
    print(f"  {'page':<40} {'min':>8} {'median':>8} {'max':>8} {'SQL med':>8} {'SQLs':>4}")
    measure("list, default", options.runs, page(changelist))
    measure("list, status=dead", options.runs, page(changelist, {"status__exact": "dead"}))
    measure("list, state=dead", options.runs, page(changelist, {"state": "dead"}))
    measure("list, state=ready", options.runs, page(changelist, {"state": "ready"}))
    measure("list, state=in_flight", options.runs, page(changelist, {"state": "in_flight"}))
    measure("list, state=consumed", options.runs, page(changelist, {"state": "consumed"}))
    measure("list, event_type filter", options.runs, page(changelist, {"event_type": TYPES[3]}))
    measure("list, topic filter", options.runs, page(changelist, {"topic": "bench.topic1"}))
    measure("list, page 50", options.runs, page(changelist, {"p": "50"}))
    measure(
        "search: key (conversation-42)", options.runs, page(changelist, {"q": "conversation-42"})
    )
    measure("search: event id = key", options.runs, page(changelist, {"q": keyed.message_key}))
    measure(
        "search: event id only in payload",
        options.runs,
        page(changelist, {"q": custom_key.event.event_id.hex}),
    )
    measure("search: #id", options.runs, page(changelist, {"q": f"#{keyed.pk}"}))
    measure(
        "detail page",
        options.runs,
        page(reverse("admin:django_outbox_outboxmessage_change", args=[keyed.pk])),
    )
    failures = reverse("admin:django_outbox_outboxmessage_failures")
    measure("failures by error (page)", options.runs, page(failures))
    measure(
        "group_failures() alone", options.runs, lambda: group_failures(OutboxMessage.objects.all())
    )
    measure(
        "list, one failure group",
        options.runs,
        page(changelist, {"failure": "ValueError: bad amount 3"}),
    )
    measure(
        "list, state=dead + failure group",
        options.runs,
        page(changelist, {"state": "dead", "failure": "KafkaConnectionError: broker unavailable"}),
    )
    dead_row = OutboxMessage.objects.dead().order_by("-pk").first()
    assert dead_row is not None
    measure(
        "detail page of a dead row",
        options.runs,
        page(reverse("admin:django_outbox_outboxmessage_change", args=[dead_row.pk])),
    )
    measure("summary() alone", options.runs, lambda: summary(OutboxMessage.objects.all()))
    measure(
        "paginator count, unfiltered",
        options.runs,
        lambda: OutboxPaginator(OutboxMessage.objects.order_by("-pk"), 100).count,
    )
    measure("COUNT(*) of the table (what we avoid)", options.runs, OutboxMessage.objects.count)
    measure("with date_hierarchy: list", options.runs, dated_list({}))
    measure(
        "with date_hierarchy: list, one day",
        options.runs,
        dated_list(
            {
                "created_at__year": str(keyed.created_at.year),
                "created_at__month": str(keyed.created_at.month),
                "created_at__day": str(keyed.created_at.day),
            }
        ),
    )


if __name__ == "__main__":
    main()
