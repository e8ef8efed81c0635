#!/usr/bin/env python
"""What publish_event() + commit costs a request: fast path off, "sync" and "thread".

Usage (a broker from ``scripts/kafka-local start``; the database from DATABASE_URL,
SQLite when unset; a throw-away test database is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/publish_bench.py [--transactions 2000] [--size 1000]

Each figure is the mean wall time of one ``with transaction.atomic(): ...`` in the
calling thread. "thread" then waits (fastpath.flush) for the background deliveries,
reported apart. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per event")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval() in seconds (Python's default is 0.005): how long the "
        "request thread may wait for the GIL while the delivery thread runs",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds between transactions, not timed (0: back to back, the delivery "
        "thread then competes with the publishing thread the whole time)",
    )
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection, transaction
    from django.test.utils import setup_databases, teardown_databases

    from django_outbox import fastpath, kafka, publish_event
    from django_outbox.envelope import Event
    from django_outbox.models import OutboxMessage

    test = settings.DATABASES["default"].setdefault("TEST", {})
    if "sqlite" not in settings.DATABASES["default"]["ENGINE"]:
        test["NAME"] = f"bench_publish_{settings.DATABASES['default']['NAME']}"
    else:
        Path(settings.SQLITE_TEST_DIR).mkdir(parents=True, exist_ok=True)
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"
    )
    old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    try:
        topic = f"bench-publish-{uuid.uuid4().hex[:8]}"
        with kafka.build_admin() as admin:
            admin.create_topics([kafka.NewTopic(topic, 3, 1)])
            admin.wait_for_topics([topic], timeout_ms=30000)
        data = {"pad": "x" * max(args.size - 200, 0)}
        payload = Event("bench.event", data, key="k").to_json()
        count = args.transactions
        print(
            f"database: {connection.vendor}; {count} transactions of one {args.size}-byte "
            f"event; switch interval {sys.getswitchinterval() * 1000:g} ms; "
            f"{args.pause * 1000:g} ms between transactions"
        )

        def timed(function) -> float:
            spent = 0.0
            for index in range(count):
                started = time.perf_counter()
                with transaction.atomic():
                    function(index)
                spent += time.perf_counter() - started
                if args.pause:
                    time.sleep(args.pause)
            return spent / count

        def plain(index: int) -> None:
            OutboxMessage.objects.create(
                event_type="bench.event", topic=topic, message_key="k", payload=payload
            )

        def via_publish(index: int) -> None:
            publish_event("bench.event", data, key="k", topic=topic)

        settings.OUTBOX_WAKE_RELAY = False
        timed(plain)  # warm-up
        costs = {"create()": timed(plain), "publish, fast path off": timed(via_publish)}
        for mode in ("sync", "thread"):
            settings.OUTBOX_WAKE_RELAY = True
            settings.OUTBOX_FAST_PATH_MODE = mode
            with transaction.atomic():  # warm-up: builds the shared producer
                via_publish(0)
            fastpath.flush(30)
            fastpath.stats.reset()
            started = time.perf_counter()
            costs[f"publish, fast path {mode!r}"] = timed(via_publish)
            fastpath.flush(60)
            total = time.perf_counter() - started
            stats = fastpath.stats
            print(
                f"  {mode}: {stats.delivered} delivered in {total:.2f}s with "
                f"{stats.claims} claims ({stats.dropped} dropped, {stats.skipped} skipped)"
            )
            fastpath.reset_producer()
        base = costs["create()"]
        for name, cost in costs.items():
            print(f"{name:32} {cost * 1e6:8,.0f} us  {cost / base:5.2f}x create()")
        pending = OutboxMessage.objects.pending().count()
        print(f"rows left pending for the relay: {pending} (the fast-path-off ones)")
    finally:
        fastpath.reset_producer()
        teardown_databases(old_config, verbosity=0)


if __name__ == "__main__":
    main()
