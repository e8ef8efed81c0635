#!/usr/bin/env python
"""Relay throughput next to the raw kafka-python producer, and the cost of publish_event().

Usage (a broker from ``scripts/kafka-local start``; the database from DATABASE_URL,
SQLite in memory when unset; a throw-away test database is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/relay_bench.py [--rows 20000] [--size 1000] [--batch-size 500] [--repeat 5]

Each repetition times the raw producer, then the relay, on the same records (the
order alternates between repetitions, so that a slow spell of a shared machine
hits both alike). Prints each figure, then median and spread; asserts nothing
about speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
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
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of raw + relay")
    parser.add_argument("--publish-rows", type=int, default=2000, help="0: skip that part")
    parser.add_argument("--profile", action="store_true", help="profile one relay run")
    parser.add_argument(
        "--phases", action="store_true", help="time the relay's claim/send/wait/record"
    )
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

    settings.OUTBOX_WAKE_RELAY = False
    # Its own test database, apart from the test suite's.
    config = settings.DATABASES["default"]
    test = config.setdefault("TEST", {})
    if "sqlite" in config["ENGINE"]:
        # A file in WAL mode, as a relay would use it (not the test suite's location).
        test["NAME"] = str(Path(tempfile.mkdtemp(prefix="outbox-bench-"), "bench.sqlite3"))
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    else:
        test["NAME"] = f"bench_{config['NAME']}"
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = bootstrap
    old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    topics: list[str] = []
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
            topics.append(name)
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
        def raw_run() -> float:
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
            seconds = time.perf_counter() - started
            producer.close()
            return args.rows / seconds

        # --- the relay: pending -> Kafka -> published.
        def relay_run(profile: bool = False) -> float:
            relay_topic = topic()
            OutboxMessage.objects.all().delete()
            rows(relay_topic, 1)[0].save()
            Relay(burst=True).run()  # warm-up (database caches, topic metadata on the broker)
            OutboxMessage.objects.all().delete()
            OutboxMessage.objects.bulk_create(rows(relay_topic, args.rows), batch_size=1000)
            # Like the raw run, the timing includes building the producer.
            relay = Relay(burst=True, batch_size=args.batch_size, progress_interval=3600)
            started = time.perf_counter()
            if profile:
                import cProfile
                import pstats

                with cProfile.Profile() as profiler:
                    relay.run()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            else:
                relay.run()
            seconds = time.perf_counter() - started
            published = OutboxMessage.objects.published().count()
            assert published >= args.rows, published
            return args.rows / seconds

        if args.phases:
            phases = time_phases()
        raw_rates, relay_rates = [], []
        for repetition in range(args.repeat):
            if repetition % 2:
                relay_rates.append(relay_run())
                raw_rates.append(raw_run())
            else:
                raw_rates.append(raw_run())
                relay_rates.append(relay_run())
            print(
                f"  run {repetition + 1}: raw {raw_rates[-1]:,.0f} records/s, relay "
                f"{relay_rates[-1]:,.0f} rows/s, {relay_rates[-1] / raw_rates[-1]:.2f}x"
            )
        ratios = [relay / raw for relay, raw in zip(relay_rates, raw_rates, strict=True)]
        print(f"raw kafka-python producer: {spread(raw_rates)} records/s")
        print(f"relay: {spread(relay_rates)} rows/s")
        print(f"relay / raw producer: {spread(ratios, '.2f')} (ratio within each run)")
        if args.phases:
            print(
                "relay main thread, seconds over all runs (wall/CPU): "
                + ", ".join(f"{name} {wall:.2f}/{cpu:.2f}" for name, (wall, cpu) in phases.items())
            )
        if args.profile:
            relay_run(profile=True)
        if not args.publish_rows:
            return
        relay_topic = topic()

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
            f"({count} transactions each, relay wake-up off; bench/publish_bench.py has more)"
        )
    finally:
        teardown_databases(old_config, verbosity=0)
        if "sqlite" in config["ENGINE"]:
            shutil.rmtree(Path(test["NAME"]).parent, ignore_errors=True)
        if topics:
            with kafka.build_admin() as admin:
                admin.delete_topics(topics)


def spread(values: list[float], spec: str = ",.0f") -> str:
    """Median, and min-max, of ``values``."""
    return (
        f"median {format(statistics.median(values), spec)} "
        f"(min {format(min(values), spec)}, max {format(max(values), spec)}, n={len(values)})"
    )


def time_phases() -> dict[str, list[float]]:
    """Wrap the relay's steps to add up the main thread's time in each: [wall, CPU]."""
    from django_outbox import kafka, relay

    totals = {name: [0.0, 0.0] for name in ("claim", "build+send", "wait for acks", "record")}

    def timed(name: str, function):
        def wrapper(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name][0] += time.perf_counter() - started
                totals[name][1] += time.thread_time() - cpu

        return wrapper

    relay.claim = timed("claim", relay.claim)
    relay.Relay._send = timed("build+send", relay.Relay._send)
    kafka.await_acks = timed("wait for acks", kafka.await_acks)
    relay.Relay._record = timed("record", relay.Relay._record)
    return totals


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
