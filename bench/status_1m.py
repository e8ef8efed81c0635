"""Status counts and prune on a table of 1,000,000 rows next to one of 10,000.

Usage (two databases of its own, created and seeded if missing: the one of
DATABASE_URL holds ``--rows`` rows, the same name with ``_small`` ``--small-rows``;
SQLite in a temporary directory when DATABASE_URL is unset)::

    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_status_1m \\
        python bench/status_1m.py [--rows 1000000] [--small-rows 10000] [--runs 5] \\
        [--reseed] [--plans] [--json PATH]
    DATABASE_URL=mysql://outbox:outbox@127.0.0.1:3306/outbox_status_1m python bench/status_1m.py
    python bench/status_1m.py --rows 100000 --runs 3      # SQLite

Both tables come from bench/seeding.py with ``live=1000``: the same 1,000 rows of work
in hand (pending and published) and 100 dead rows, all the rest consumed history
(999,000 final rows of 1,000,000). Each run, interleaved on the two tables:

* **status counts**: ``status.database_status`` (what ``manage.py outbox_status``
  computes, without ``--by-type``);
* **prune**: ``OutboxMessage.objects.prune(cutoff)`` with a cutoff that makes the
  1,000 oldest consumed rows prunable (what a daily ``outbox_prune --days N`` finds
  on a table pruned the day before), inside a transaction rolled back afterwards
  so that every run finds the same rows.

Prints min / median / max milliseconds of each and, with ``--plans``, each query's
plan on the large table. ``--json`` writes the figures "status counts at 1M vs 10k"
and "prune at 1M vs 10k" (bench/results.py): values are the large table's times,
baselines the small one's, lower is better, target 1.5.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from seeding import create_database, seed  # noqa: E402

LIVE = 1_000
PRUNED = 1_000
TARGET = 1.5


class Rollback(Exception):
    pass


def short(rows: int) -> str:
    """``1_000_000`` -> ``"1M"``, ``10_000`` -> ``"10k"``."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{suffix}"
    return f"{rows:,}"


def small_url(url: str) -> str:
    base, _, name = url.rpartition("/")
    stem, dot, suffix = name.partition(".")
    return f"{base}/{stem}_small{dot}{suffix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--plans", action="store_true", help="print each query's plan")
    parser.add_argument("--json", help="write the figures to this file (bench/results.py)")
    options = parser.parse_args()
    if min(options.rows, options.small_rows) < LIVE + 100 + 2 * PRUNED:
        parser.error(f"--rows and --small-rows must be at least {LIVE + 100 + 2 * PRUNED}")
    scratch = None
    if not os.environ.get("DATABASE_URL"):
        scratch = tempfile.mkdtemp(prefix="outbox-status-bench-")
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/status.sqlite3"
    url = os.environ["DATABASE_URL"]
    create_database(url)
    create_database(small_url(url))
    try:
        run(options)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def run(options: argparse.Namespace) -> None:
    import django
    from django.conf import settings

    default = settings.DATABASES["default"]
    settings.DATABASES["small"] = {**default, "NAME": small_url(str(default["NAME"]))}
    if not default["ENGINE"].endswith("sqlite3"):
        settings.DATABASES["small"]["NAME"] = f"{default['NAME']}_small"
    django.setup()
    from django.db import connections, transaction
    from django.test.utils import CaptureQueriesContext

    from django_outbox.models import OutboxMessage
    from django_outbox.ops.status import database_status

    sizes = {"default": options.rows, "small": options.small_rows}
    for alias, rows in sizes.items():
        seed(rows, options.reseed, live=LIVE, using=alias)
    vendor = connections["default"].vendor

    def cutoff(alias: str) -> datetime.datetime:
        """The last change of the oldest row that stays: the ``PRUNED`` before it go."""
        rows = OutboxMessage.objects.using(alias).order_by("pk")
        found = rows.values_list("updated_at", flat=True)[PRUNED]
        assert found is not None
        return found

    cutoffs = {alias: cutoff(alias) for alias in sizes}

    def status(alias: str) -> None:
        database_status(alias)

    def prune(alias: str) -> None:
        try:
            with transaction.atomic(using=alias):
                deleted = OutboxMessage.objects.using(alias).prune(cutoffs[alias])
                assert deleted == PRUNED, (alias, deleted)
                raise Rollback
        except Rollback:
            pass

    jobs: dict[str, Callable[[str], None]] = {"status counts": status, "prune": prune}
    times: dict[tuple[str, str], list[float]] = {
        (job, alias): [] for job in jobs for alias in sizes
    }
    queries: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for call in jobs.values():  # warm-up: caches, plans
        for alias in sizes:
            call(alias)
    for _ in range(options.runs):
        for job, call in jobs.items():
            for alias in sizes:
                with CaptureQueriesContext(connections[alias]) as captured:
                    started = time.perf_counter()
                    call(alias)
                    times[job, alias].append((time.perf_counter() - started) * 1000)
                queries[job, alias] = captured.captured_queries

    print(
        f"\n{vendor}: {options.rows:,} rows against {options.small_rows:,} "
        f"({LIVE:,} pending/published and 100 dead in both), {options.runs} runs, ms:"
    )
    print(f"  {'':24} {'rows':>10} {'min':>8} {'median':>8} {'max':>8} {'SQLs':>5}")
    for (job, alias), values in times.items():
        print(
            f"  {job:<24} {sizes[alias]:>10,} {min(values):8.1f} "
            f"{statistics.median(values):8.1f} {max(values):8.1f} {len(queries[job, alias]):5d}"
        )
    figures = []
    for job in jobs:
        figure = results.Figure(
            name=f"{job} at {short(options.rows)} vs {short(options.small_rows)}",
            unit="ms",
            higher_is_better=False,
            baseline_name=f"{job} at {options.small_rows:,} rows",
            values=times[job, "default"],
            baseline_values=times[job, "small"],
            target=TARGET,
        )
        ratios = figure.ratios()
        print(
            f"  {figure.name}: {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target <= {TARGET}x)"
        )
        figures.append(figure)
    if options.plans:
        print_plans(connections["default"], queries)
    if options.json:
        results.write(options.json, "status", vendor, figures)


def print_plans(connection: Any, queries: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    print("\nlast run on the large table, per query (ms) and plan:")
    explain = "EXPLAIN QUERY PLAN" if connection.vendor == "sqlite" else "EXPLAIN"
    with connection.cursor() as cursor:
        for (job, alias), captured in queries.items():
            if alias != "default":
                continue
            print(f" {job}:")
            for query in captured:
                sql = query["sql"]
                print(f"  {float(query['time'] or 0) * 1000:7.1f}  {sql[:150]}")
                if not sql.lstrip().upper().startswith(("SELECT", "DELETE")):
                    continue
                try:
                    cursor.execute(f"{explain} {sql}")
                except Exception as exc:  # a statement the logged SQL cannot replay
                    print(f"           (no plan: {exc})")
                    continue
                for row in cursor.fetchall():
                    plan = " | ".join(str(part) for part in row if part is not None)
                    print(f"           {plan[:200]}")


if __name__ == "__main__":
    main()
