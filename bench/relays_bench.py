#!/usr/bin/env python
"""1, 2 and 3 relays on one database (relay buckets): throughput and same-key order.

Usage (a broker from ``scripts/kafka-local start``; PostgreSQL or MariaDB from
DATABASE_URL; a throw-away database ``bench_<name>`` is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/relays_bench.py [--rows 20000] [--keys 500] [--relays 1,2,3] [--repeat 2]

For each relay count, the relays start as ``manage.py outbox_relay`` processes on an
empty table and the run waits until they share the 64 buckets; then the rows are
written in one transaction, and the time runs from that commit to the last row
``published``. The raw kafka-python producer sends the same records in the same run
(the baseline). The topic is read back and the same-key inversions counted (a
record of a key after a later row of the same key). Prints figures; asserts nothing
about speed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def stop(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every relay still running, wait for each (kill after 30 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def shared(n: int) -> bool:
    """Whether ``n`` live relays own all the buckets of the default database between them."""
    from django_outbox.models import buckets

    live = [r for r in buckets.assignment("default") if r["alive"] and r["buckets"]]
    return len(live) == n and sum(r["buckets"] for r in live) == buckets.BUCKETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per row")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--relays", default="1,2,3", help="comma-separated relay counts")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection, transaction

    from bench.seeding import bench_database
    from django_outbox import kafka
    from django_outbox.envelope import Event
    from django_outbox.models import OutboxMessage, Status
    from tests.kafka_fixtures import order_inversions, read_topic
    from tests.relay_support import database_url

    counts = [int(n) for n in args.relays.split(",")]
    pad = "x" * max(args.size - 200, 0)

    def topic() -> str:
        name = f"bench-relays-{uuid.uuid4().hex[:8]}"
        with kafka.build_admin() as admin:
            admin.create_topics([kafka.NewTopic(name, args.partitions, 1)])
            admin.wait_for_topics([name], timeout_ms=30000)
        return name

    def rows(name: str) -> list[OutboxMessage]:
        out = []
        for index in range(args.rows):
            event = Event("bench.event", {"n": index, "pad": pad}, key=f"key-{index % args.keys}")
            out.append(
                OutboxMessage(
                    event_type=event.event_type,
                    topic=name,
                    message_key=event.key,
                    payload=event.to_json(),
                    status=Status.PENDING,
                )
            )
        return out

    def raw_run() -> float:
        name = topic()
        records = [
            kafka.OutboxRecord(
                name,
                row.message_key.encode(),
                row.payload.encode(),
                kafka.outbox_headers(i + 1, row.event_type, row.payload, "default"),
            )
            for i, row in enumerate(rows(name))
        ]
        producer = kafka.build_producer()
        producer.send(name, value=b"warm-up", key=b"w").get(30)
        started = time.perf_counter()
        for r in records:
            producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
        producer.flush()
        seconds = time.perf_counter() - started
        producer.close()
        return args.rows / seconds

    def start_relays(n: int) -> list[subprocess.Popen[str]]:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.relay_subprocess_settings",
                "DATABASE_URL": database_url("default"),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "PYTHONPATH": str(ROOT),
                "OUTBOX_TEST_LEASE": "15",
            }
        )
        return [
            subprocess.Popen(
                [sys.executable, str(ROOT / "testproject" / "manage.py"), "outbox_relay"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(n)
        ]

    def relay_run(n: int) -> tuple[float, int, int]:
        name = topic()
        OutboxMessage.objects.all().delete()
        processes = start_relays(n)
        try:
            deadline = time.monotonic() + 60
            while not shared(n):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{n} relays did not share the buckets within 60 s")
                time.sleep(0.1)
            made = rows(name)
            with transaction.atomic():
                OutboxMessage.objects.bulk_create(made, batch_size=1000)
            started = time.perf_counter()
            deadline = time.monotonic() + 600
            while OutboxMessage.objects.published().count() < args.rows:
                if time.monotonic() > deadline:
                    raise SystemExit("the relays did not publish every row within 600 s")
                time.sleep(0.02)
            seconds = time.perf_counter() - started
        finally:
            stop(processes)
        records = read_topic(bootstrap, name, args.rows, timeout=60)
        inversions = order_inversions(records)
        return args.rows / seconds, inversions, len(records)

    with bench_database(
        on_sqlite="relay buckets need PostgreSQL or MariaDB: set DATABASE_URL"
    ) as bootstrap:
        print(
            f"database: {connection.vendor}; {args.rows} rows x {args.size} bytes, "
            f"{args.keys} keys, {args.partitions} partitions, {os.cpu_count()} cores"
        )
        results: dict[str, list[Any]] = defaultdict(list)
        for repetition in range(args.repeat):
            results["raw"].append(raw_run())
            for n in counts:
                rate, inversions, read = relay_run(n)
                results[n].append((rate, inversions, read))
                print(
                    f"  run {repetition + 1}: {n} relay(s) {rate:,.0f} rows/s, "
                    f"{inversions} same-key inversions, {read} records read back"
                )
            print(f"  run {repetition + 1}: raw kafka-python producer {results['raw'][-1]:,.0f}/s")
        raw = statistics.median(results["raw"])
        one = statistics.median(rate for rate, _, _ in results[counts[0]])
        print(f"\nraw kafka-python producer: {raw:,.0f} rec/s (median)")
        for n in counts:
            rate = statistics.median(r for r, _, _ in results[n])
            inversions = sum(i for _, i, _ in results[n])
            print(
                f"{n} relay(s): {rate:,.0f} rows/s (median) = {rate / raw:.2f}x raw, "
                f"{rate / one:.2f}x {counts[0]} relay(s); same-key inversions {inversions}"
            )


if __name__ == "__main__":
    main()
