"""Time of ``manage.py outbox_status`` on a table of 1,000,000 rows.

Usage (the database is created and seeded as bench/admin_1m.py does; use one of its own)::

    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_status_1m \\
        python bench/status_1m.py [--rows 1000000] [--runs 5] [--reseed]
    DATABASE_URL=mysql://outbox:outbox@127.0.0.1:3306/outbox_status_1m python bench/status_1m.py

Prints min / median / max wall-clock milliseconds of ``status.database_status`` (what the
command computes), with and without ``--by-type``, the time per query, and each query's plan.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from admin_1m import create_database, seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reseed", action="store_true")
    options = parser.parse_args()
    create_database(os.environ.get("DATABASE_URL", ""))

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_outbox.models import OutboxMessage
    from django_outbox.status import database_status

    seed(options.rows, options.reseed)
    print(
        f"\n{connection.vendor}, {OutboxMessage.objects.count():,} rows, {options.runs} runs, ms:"
    )
    for by_type in (False, True):
        times = []
        for _ in range(options.runs):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                database_status("default", by_type=by_type)
                times.append((time.perf_counter() - started) * 1000)
        label = "outbox_status --by-type" if by_type else "outbox_status"
        print(
            f"  {label:<26} min {min(times):7.1f}  median {statistics.median(times):7.1f}"
            f"  max {max(times):7.1f}  ({len(captured)} queries)"
        )
    print("\nlast run, per query (ms) and plan:")
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            print(f"  {float(query['time']) * 1000:7.1f}  {query['sql'][:150]}")
            cursor.execute(f"EXPLAIN {query['sql']}")
            for row in cursor.fetchall():
                print("           " + " | ".join(str(part) for part in row if part is not None))


if __name__ == "__main__":
    main()
