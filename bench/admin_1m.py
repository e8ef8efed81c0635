"""Server time of the outbox admin on a table of 1,000,000 rows.

Usage (the database is created if missing; use one of its own, never a test database)::

    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_admin_1m \\
        python bench/admin_1m.py [--rows 1000000] [--runs 5] [--reseed]
    DATABASE_URL=mysql://outbox:outbox@127.0.0.1:3306/outbox_admin_1m python bench/admin_1m.py

The rows are seeded inside the server by bench/seeding.py, in its admin's mix: 96 %
consumed, 1 % published, 1 % dead, 2 % pending (ready, backing off, in flight), eight
event types, three topics, keys mostly the event id, creation times spread over 30 days
in id order. Dead and backing-off rows carry one of 11 errors (four kinds, one a
handler's traceback), which the failure groups (``admin_failures.py``) read.

Each page is requested ``--runs`` times through Django's test client as a logged-in
superuser; the figures are wall-clock server times (request in, response rendered)
in milliseconds: min / median / max, the median time spent in SQL (the part that
grows with the table; the rest is rendering 100 rows) and the number of queries.

The side tables are seeded at the outbox's scale where it matters: one ``Publication``
per published row (what the relay writes), and one row gets a history of every kind
(attempts, rejected copies, inbox entries, operator actions), whose page is timed with
its journey (admin/journey.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeding import create_database, seed  # noqa: E402

TYPES = [f"bench.type{n}" for n in range(8)]


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


def seed_publications(reseed: bool) -> None:
    """A publication per published row, as the relay writes them: one server-side INSERT."""
    from django.db import connection

    from django_outbox.models import OutboxMessage, Publication

    if Publication.objects.exists() and not reseed:
        print(f"{Publication.objects.count():,} publications already there")
        return
    Publication.objects.all().delete()
    q = connection.ops.quote_name
    columns = ", ".join(
        q(name) for name in ("outbox_id", "topic", "partition", "offset", "worker", "published_at")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(Publication._meta.db_table)} ({columns}) "
            f"SELECT id, topic, id % 3, id, 'bench:1', published_at "
            f"FROM {q(OutboxMessage._meta.db_table)} WHERE published_at IS NOT NULL"
        )
    print(f"{Publication.objects.count():,} publications seeded")


def seed_journey(row: Any, user: Any) -> None:
    """A history of every kind for ``row`` (once): what its journey shows."""
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.utils import timezone

    from django_outbox.models import FailedAttempt, InboxEntry, RejectedRecord

    if FailedAttempt.objects.filter(outbox_id=row.pk, worker="bench:journey").exists():
        return
    now = timezone.now()
    event_id = row.event.event_id
    FailedAttempt.objects.bulk_create(
        FailedAttempt(
            outbox_id=row.pk,
            attempt=n,
            source="relay",
            worker="bench:journey",
            error="KafkaTimeoutError",
            failed_at=now,
        )
        for n in range(1, 6)
    )
    RejectedRecord.objects.bulk_create(
        RejectedRecord(
            consumer_group=f"bench-{n}",
            reason="handler_failed",
            topic=row.topic,
            partition=0,
            offset=row.pk,
            event_id=event_id,
        )
        for n in range(2)
    )
    InboxEntry.objects.bulk_create(
        InboxEntry(
            consumer_group=f"bench-{n}",
            event_id=event_id,
            event_type=row.event_type,
            topic=row.topic,
            partition=0,
            offset=row.pk,
        )
        for n in range(3)
    )
    LogEntry.objects.log_actions(user.pk, [row, row], CHANGE, change_message="bench")


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

    from django_outbox.admin.counts import OutboxPaginator, summary
    from django_outbox.admin.failures import group_failures
    from django_outbox.admin.journey import journey
    from django_outbox.admin.messages import OutboxMessageAdmin
    from django_outbox.models import OutboxMessage

    seed(options.rows, options.reseed)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", password="bench"
    )
    seed_publications(options.reseed)
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
    seed_journey(keyed, user)
    measure(
        "detail page with a journey (16 steps)",
        options.runs,
        page(reverse("admin:django_outbox_outboxmessage_change", args=[keyed.pk])),
    )
    measure("journey() alone", options.runs, lambda: journey(keyed))
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
