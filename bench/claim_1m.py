#!/usr/bin/env python
"""The relay's claim on a table of 1,000,000 rows next to the same claim on 10,000 rows.

Usage (the database is created if missing; use one of its own, never a test database;
its table is emptied and seeded, first with 10,000 rows, then with 1,000,000)::

    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_claim_1m \\
        python bench/claim_1m.py [--runs 15] [--batch-size 500] [--json PATH]
    DATABASE_URL=mysql://outbox:outbox@127.0.0.1:3306/outbox_claim_1m python bench/claim_1m.py
    DATABASE_URL=sqlite:////tmp/outbox_claim_1m.sqlite3 python bench/claim_1m.py

Each table holds 1,000 ``pending`` rows, the newest, due now, and final rows before
them (100 ``dead`` just before, all older ones ``consumed``): what a relay meets once
the table has kept a few weeks of events. Seeding runs inside the server, by
bench/seeding.py (its ``live`` mix, then the 1,000 newest made pending and due).
Each run times one claim of ``--batch-size`` rows from the start of
the table (what a relay does at least every 10 seconds, and on every idle poll),
then gives the rows back (not timed). Also times a claim that finds nothing due
(the idle poll). Prints min / median / max milliseconds and the claim's plan; the
figure is the claim at 1M over the claim at 10k (target at most 1.5).
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
# seeding.py's project (relay_bench.py would pick tests.settings)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
from relay_bench import spread, write_json  # noqa: E402
from seeding import analyze, create_database, seed  # noqa: E402

PENDING = 1000
#: Claims not timed after seeding (caches, and on MariaDB the purge of the seed's writes).
WARM_UP = 5


def prepare_table(rows: int) -> None:
    """``rows`` rows: the last ``PENDING`` pending and due, the others final."""
    from django.db import connection

    from django_outbox.models import OutboxMessage

    table = OutboxMessage._meta.db_table
    started = time.perf_counter()
    # The history is final from the start (``live``): an UPDATE of 999,000 rows would
    # leave as many delete-marked entries in MariaDB's status index, which its purge
    # removes only minutes later, and the claim would be timed walking past them.
    seed(rows, reseed=True, live=PENDING)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT MAX(id) FROM {table}")
        (last,) = cursor.fetchone()
        cursor.execute(
            f"UPDATE {table} SET status = 'consumed', next_retry_at = NULL "
            f"WHERE status = 'pending' AND id <= %s",
            [last - PENDING],
        )
        cursor.execute(
            f"UPDATE {table} SET status = 'pending', next_retry_at = NULL, last_error = NULL, "
            "published_at = NULL, consumed_at = NULL, retry_count = 0 WHERE id > %s",
            [last - PENDING],
        )
    analyze(connection)
    seconds = time.perf_counter() - started
    print(f"{rows:,} rows ready ({PENDING} pending at the end) in {seconds:.1f} s")


def time_claims(runs: int, batch_size: int) -> tuple[list[float], list[float], str]:
    """Milliseconds of ``runs`` claims, of ``runs`` claims finding nothing, and a plan."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_outbox.models import OutboxMessage
    from django_outbox.models.claiming import claim

    rows = OutboxMessage.objects.using("default")
    claims, empty = [], []
    for run in range(runs + WARM_UP):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            batch = claim("default", batch_size, 60)
            elapsed = (time.perf_counter() - started) * 1000
        assert len(batch) == batch_size, len(batch)
        if run >= WARM_UP:  # the first ones warm the caches
            claims.append(elapsed)
        rows.filter(pk__in=[row.id for row in batch.rows]).update(next_retry_at=None)
    # nothing due: every pending row leased for a minute
    held = claim("default", PENDING, 60)
    for _ in range(runs):
        started = time.perf_counter()
        assert not claim("default", batch_size, 60).rows
        empty.append((time.perf_counter() - started) * 1000)
    rows.filter(pk__in=[row.id for row in held.rows]).update(next_retry_at=None)
    return claims, empty, plan(captured.captured_queries)


def plan(queries: list[dict[str, Any]]) -> str:
    """The plan of the claim's first query that reads the table."""
    from django.db import connection

    sql = next(q["sql"] for q in queries if "agent_outbox_messages" in q["sql"])
    if connection.vendor == "postgresql":
        # EXPLAIN without ANALYZE: the statement is not run again
        explain = "EXPLAIN " + sql
    elif connection.vendor == "mysql":
        explain = "EXPLAIN " + sql
    else:
        explain = "EXPLAIN QUERY PLAN " + sql
    with connection.cursor() as cursor:
        cursor.execute(explain)
        lines = [" | ".join(str(part) for part in row if part is not None) for row in cursor]
    return "\n".join("    " + line for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--small", type=int, default=10_000, help="rows of the baseline table")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="write the figures here (bench/run.py)")
    options = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("sqlite"):
        create_database(url)  # (importing admin_1m chose the demo project's settings)

    import django

    django.setup()
    from django.db import connection

    results: dict[str, list[float]] = {}
    # 10k, 1M, 10k again: the baseline is taken on both sides of the big table, so
    # that a slow spell of a shared machine does not favour one size.
    for label, rows in (
        ("small", options.small),
        ("large", options.rows),
        ("again", options.small),
    ):
        prepare_table(rows)
        claims, empty, shown = time_claims(options.runs, options.batch_size)
        results[label] = claims
        print(f"{connection.vendor}, {rows:,} rows, claim of {options.batch_size}, ms:")
        print(f"  claim         {spread(claims, '.1f')}")
        print(f"  nothing due   {spread(empty, '.1f')}")
        print(f"  plan:\n{shown}")
    large = results["large"]
    small = [(a + b) / 2 for a, b in zip(results["small"], results["again"], strict=True)]
    ratio = statistics.median(large) / statistics.median(small)
    print(
        f"claim at {options.rows:,} rows / at {options.small:,} rows: {ratio:.2f}x "
        f"(medians; target at most 1.5x)"
    )
    if options.json:
        figure = {
            "name": f"claim at {options.rows:,} rows vs at {options.small:,} rows",
            "unit": "s",
            "higher_is_better": False,
            "baseline_name": f"claim at {options.small:,} rows",
            "values": [round(ms / 1000, 6) for ms in large],
            "baseline_values": [round(ms / 1000, 6) for ms in small],
            "target": 1.5,
        }
        write_json(options.json, "claim", connection.vendor, [figure])


if __name__ == "__main__":
    main()
