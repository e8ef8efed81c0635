#!/usr/bin/env python
"""What publish_event() + commit costs a request, and how soon the handler runs.

Usage (a broker from ``scripts/kafka-local start``; the database from DATABASE_URL,
SQLite when unset; a throw-away test database is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/publish_bench.py [--transactions 1000] [--repeat 5] [--latency 300] \\
        [--json PATH]

1. *Cost*: the mean wall time of one ``with transaction.atomic(): ...`` holding one
   event, against a bare ``INSERT`` of the same row (the baseline, measured in the
   same run): ``publish_event()`` with the relay wake-up off, and on (the default:
   ``NOTIFY`` on PostgreSQL, an ``on_commit`` callback everywhere). Min, median and
   max over ``--repeat`` rounds, interleaved so that machine noise hits all alike.
2. *Latency* (``--latency N``): bench/latency_bench.py's commit -> handler: the
   real ``outbox_relay`` and ``outbox_consume`` commands run as subprocesses
   (default settings, the demo's chat handler); N events are published one per
   transaction, ``--gap`` seconds apart; ``consumed_at - created_at`` of each row.
   Prints p50, p90, p99, max (``latency_bench.py --trace`` says where the time goes).

Prints figures; asserts nothing about speed. ``--json PATH`` writes the two cost
figures (bench/results.py; per round, against the bare ``INSERT`` of the same round;
lower is better, target 1.2x, the delivery-core issue's) for bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def spread(values: list[float]) -> str:
    return f"{min(values):8,.0f} {statistics.median(values):8,.0f} {max(values):8,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1000, help="per round and variant")
    parser.add_argument("--repeat", type=int, default=5, help="rounds")
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per event")
    parser.add_argument("--latency", type=int, default=300, help="events (0: skip)")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--json", help="write the cost figures to this file (bench/results.py)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection, transaction

    from bench.seeding import bench_database
    from django_outbox import kafka, publish_event
    from django_outbox.envelope import Event
    from django_outbox.models import OutboxMessage
    from tests.relay_support import database_url

    with bench_database(prefix="bench_publish") as bootstrap:
        topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
        with kafka.build_admin() as admin:
            admin.create_topics([kafka.NewTopic(topic, 3, 1)])
            admin.wait_for_topics([topic], timeout_ms=30000)
        data = {"pad": "x" * max(args.size - 200, 0)}
        payload = Event("bench.event", data, key="k").to_json()
        table = connection.ops.quote_name(OutboxMessage._meta.db_table)
        insert = (
            f"INSERT INTO {table} (biz_type, topic, message_key, payload, status, retry_count, "
            "max_retry, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 0, 20, %s, %s)"
        )
        count = args.transactions
        print(
            f"database: {connection.vendor}; rounds of {count} transactions holding one "
            f"{args.size}-byte event; {args.repeat} rounds"
        )

        def bare_insert() -> None:
            now = connection.ops.adapt_datetimefield_value(django.utils.timezone.now())
            with connection.cursor() as cursor:
                cursor.execute(insert, ["bench.event", topic, "k", payload, "pending", now, now])

        def publish() -> None:
            publish_event("bench.event", data, key="k", topic=topic)

        def timed(function, wake: bool) -> float:
            settings.OUTBOX_WAKE_RELAY = wake
            started = time.perf_counter()
            for _ in range(count):
                with transaction.atomic():
                    function()
            return (time.perf_counter() - started) / count * 1e6

        variants = {
            "bare INSERT (baseline)": (bare_insert, False),
            "publish_event, wake-up off": (publish, False),
            "publish_event (default: wake-up on)": (publish, True),
        }
        for function, wake in variants.values():  # warm-up
            timed(function, wake)
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, (function, wake) in variants.items():
                results[name].append(timed(function, wake))
        base = statistics.median(results["bare INSERT (baseline)"])
        print(f"{'us per transaction':40} {'min':>8} {'median':>8} {'max':>8}  ratio (median)")
        for name, values in results.items():
            ratio = statistics.median(values) / base
            print(f"{name:40} {spread(values)}  {ratio:5.2f}x")
        if args.json:
            write_json(args.json, connection.vendor, results)

        if args.latency:
            latency(args, settings, bootstrap, database_url("default"))


def write_json(path: str, vendor: str, measured: dict[str, list[float]]) -> None:
    import results

    baseline = measured["bare INSERT (baseline)"]
    figures = [
        results.Figure(
            name=f"{name} vs bare INSERT",
            unit="µs",
            higher_is_better=False,
            baseline_name="bare INSERT",
            values=values,
            baseline_values=baseline,
            target=1.2,
        )
        for name, values in measured.items()
        if values is not baseline
    ]
    results.write(path, "publish", vendor, figures)


def latency(args, settings, bootstrap: str, url: str) -> None:
    """Commit -> handler (bench/latency_bench.py, which also traces each stage)."""
    import latency_bench

    latency_bench.latency(
        argparse.Namespace(
            events=args.latency,
            gap=args.gap,
            trace=False,
            relay_option=[],
            consumer_option=[],
            setting=[],
        ),
        settings,
        bootstrap,
        url,
    )


if __name__ == "__main__":
    main()
