#!/usr/bin/env python
"""Relay throughput next to the raw kafka-python producer, and the cost of publish_event().

Usage (a broker from ``scripts/kafka-local start``; the database from DATABASE_URL,
SQLite in memory when unset; a throw-away test database is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/relay_bench.py [--rows 20000] [--size 1000] [--batch-size 500]

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per row")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--publish-rows", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="profile the relay run")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection, transaction
    from django.test.utils import setup_databases, teardown_databases

    from django_outbox import kafka, publish_event
    from django_outbox.envelope import Event
    from django_outbox.models import OutboxMessage, Status
    from django_outbox.relay import Relay

    settings.OUTBOX_FAST_PATH = False
    # Its own test database, apart from the test suite's.
    test = settings.DATABASES["default"].setdefault("TEST", {})
    if "sqlite" not in settings.DATABASES["default"]["ENGINE"]:
        test["NAME"] = f"bench_{settings.DATABASES['default']['NAME']}"
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = bootstrap
    old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    try:
        vendor = connection.vendor
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, Django {django.get_version()}, "
            f"kafka-python {kafka_version()}"
        )
        print(
            f"database: {vendor} {connection.Database.__name__} "
            f"server {getattr(connection, 'mysql_server_info', '') or server_version(connection)}"
        )
        print(f"rows: {args.rows} x {args.size}-byte payloads, relay batch {args.batch_size}")

        def topic() -> str:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            with kafka.build_admin() as admin:
                admin.create_topics([kafka.NewTopic(name, 3, 1)])
                admin.wait_for_topics([name], timeout_ms=30000)
            return name

        def rows(topic_name: str, count: int) -> list[OutboxMessage]:
            pad = "x" * max(args.size - 200, 0)  # the envelope around it is ~200 bytes
            out = []
            for index in range(count):
                event = Event("bench.event", {"n": index, "pad": pad}, key=f"key-{index % 100}")
                out.append(
                    OutboxMessage(
                        event_type=event.event_type,
                        topic=topic_name,
                        message_key=event.key,
                        payload=event.to_json(),
                        status=Status.PENDING,
                    )
                )
            return out

        # --- raw producer: same broker, records, headers and producer configuration.
        raw_topic = topic()
        records = [
            kafka.OutboxRecord(
                raw_topic,
                row.message_key.encode(),
                row.payload.encode(),
                kafka.outbox_headers(index + 1, row.event_type, row.payload, "default"),
            )
            for index, row in enumerate(rows(raw_topic, args.rows))
        ]
        warm_up = kafka.build_producer()
        warm_up.send(raw_topic, value=b"warm-up", key=b"w").get(30)
        warm_up.close()
        started = time.perf_counter()
        producer = kafka.build_producer()
        futures = [
            producer.send(r.topic, value=r.value, key=r.key, headers=r.headers) for r in records
        ]
        producer.flush()
        assert all(f.succeeded() for f in futures)
        raw_seconds = time.perf_counter() - started
        producer.close()
        raw_rate = args.rows / raw_seconds
        print(f"raw kafka-python producer: {raw_rate:,.0f} records/s ({raw_seconds:.2f}s)")

        # --- the relay: pending -> Kafka -> published.
        relay_topic = topic()
        rows(relay_topic, 1)[0].save()
        Relay(burst=True).run()  # warm-up (database caches, topic metadata on the broker)
        OutboxMessage.objects.all().delete()
        OutboxMessage.objects.bulk_create(rows(relay_topic, args.rows), batch_size=1000)
        # Like the raw run, the timing includes building the producer.
        relay = Relay(burst=True, batch_size=args.batch_size, progress_interval=3600)
        started = time.perf_counter()
        if args.profile:
            import cProfile
            import pstats

            with cProfile.Profile() as profile:
                relay.run()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
        else:
            relay.run()
        relay_seconds = time.perf_counter() - started
        published = OutboxMessage.objects.published().count()
        assert published >= args.rows, published
        relay_rate = args.rows / relay_seconds
        print(f"relay: {relay_rate:,.0f} rows/s ({relay_seconds:.2f}s)")
        print(f"relay / raw producer: {relay_rate / raw_rate:.2f}x")

        # --- publish_event() inside a transaction vs a plain create() of a same-size row.
        OutboxMessage.objects.all().delete()
        data = {"pad": "x" * max(args.size - 200, 0)}
        payload = Event("bench.event", data, key="k").to_json()
        count = args.publish_rows

        def timed(function) -> float:
            started = time.perf_counter()
            for index in range(count):
                with transaction.atomic():
                    function(index)
            return (time.perf_counter() - started) / count

        def plain(index: int) -> None:
            OutboxMessage.objects.create(
                event_type="bench.event", topic=relay_topic, message_key="k", payload=payload
            )

        def via_publish(index: int) -> None:
            publish_event("bench.event", data, key="k", topic=relay_topic)

        timed(plain)  # warm-up
        plain_cost = timed(plain)
        publish_cost = timed(via_publish)
        print(
            f"create() in a transaction: {plain_cost * 1e6:,.0f} us; publish_event(): "
            f"{publish_cost * 1e6:,.0f} us; ratio {publish_cost / plain_cost:.2f}x "
            f"({count} transactions each, fast path off)"
        )
        settings.OUTBOX_FAST_PATH = True
        fast_cost = timed(via_publish)
        print(
            f"publish_event() with the fast path (delivered at commit): "
            f"{fast_cost * 1e6:,.0f} us per transaction"
        )
        from django_outbox import fastpath

        fastpath.reset_producer()
    finally:
        teardown_databases(old_config, verbosity=0)


def kafka_version() -> str:
    from importlib.metadata import version

    return version("kafka-python")


def server_version(connection) -> str:
    if connection.vendor == "postgresql":
        return str(connection.pg_version)
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version
    return ""


if __name__ == "__main__":
    main()
