#!/usr/bin/env python
"""How long the buckets of a stopped relay wait for the other relay of the database.

Usage (a broker from ``scripts/kafka-local start``; PostgreSQL or MariaDB from
DATABASE_URL; a throw-away database ``bench_<name>`` is created and dropped)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/relay_takeover.py [--lease 15] [--rate 50] [--keys 500] [--repeat 2]

Two ``manage.py outbox_relay`` processes (tests/relay_support.py ``relay_process``,
``OUTBOX_LEASE_SECONDS`` from ``--lease``, the default ``OUTBOX_POLL_INTERVAL``) share
the 64 buckets while a thread here writes rows of ``--keys`` keys at ``--rate`` rows/s
(``OUTBOX_WAKE_RELAY`` off: the relays find rows by polling, as relays in other
processes do on MariaDB). Then, ``--repeat`` times each, one relay gets SIGTERM, or
SIGKILL, and is started again once the figures are taken. Printed per stop, in seconds
from the signal: until the other relay owns every bucket the stopped one held (the
bucket table), and until a row of those buckets written after the signal is
``published`` (its ``published_at``). Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

SIGNALS = ("SIGTERM", "SIGKILL")


class RowWriter(threading.Thread):
    """Writes one outbox row every ``1 / rate`` seconds, keys round-robin, until stopped."""

    def __init__(self, topic: str, keys: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.topic, self.keys, self.step = topic, keys, 1 / rate
        self.halt = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from django_outbox.envelope import Event
        from django_outbox.models import OutboxMessage, Status

        index = 0
        try:
            while not self.halt.wait(self.step):
                event = Event("bench.takeover", {"n": index}, key=self.keys[index % len(self.keys)])
                OutboxMessage.objects.create(
                    event_type=event.event_type,
                    topic=self.topic,
                    message_key=event.key,
                    payload=event.to_json(),
                    status=Status.PENDING,
                )
                index += 1
        finally:
            connection.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def relay_name(pid: int) -> str | None:
    """The bucket-table name of the relay process ``pid`` (``host:pid:token``)."""
    from django_outbox.models.buckets import RelayMember

    names = RelayMember.objects.filter(name__contains=f":{pid}:").values_list("name", flat=True)
    return next(iter(names), None)


def owners() -> dict[int, str | None]:
    from django.utils import timezone

    from django_outbox.models.buckets import RelayBucket

    now = timezone.now()
    return {
        bucket: owner if lease and lease > now else None
        for bucket, owner, lease in RelayBucket.objects.values_list(
            "bucket", "owner", "lease_until"
        )
    }


def first_published(topic: str, keys: list[str], since: datetime.datetime) -> float | None:
    """Seconds from ``since`` to the earliest ``published_at`` of a row of ``keys``
    written after ``since`` (None: none yet)."""
    from django.db.models import Min

    from django_outbox.models import OutboxMessage

    earliest = OutboxMessage.objects.filter(
        topic=topic, message_key__in=keys, created_at__gte=since, published_at__isnull=False
    ).aggregate(first=Min("published_at"))["first"]
    return None if earliest is None else (earliest - since).total_seconds()


def take_over(
    victim: subprocess.Popen[str], topic: str, keys: list[str], signame: str, limit: float
) -> tuple[float, float, int]:
    from django.utils import timezone

    from django_outbox.models.buckets import bucket_of

    name = relay_name(victim.pid)
    held = {bucket for bucket, owner in owners().items() if owner == name}
    if not name or not held:
        raise SystemExit(f"relay {victim.pid} owns no bucket")
    held_keys = [key for key in keys if bucket_of(topic, key) in held]
    time.sleep(2)  # rows of the victim's buckets flowing through it meanwhile
    since = timezone.now()
    start = time.monotonic()
    victim.send_signal(getattr(signal, signame))
    owned = published = None
    while owned is None or published is None:
        elapsed = time.monotonic() - start
        if elapsed > limit:
            raise SystemExit(f"buckets {sorted(held)} not taken over within {limit:.0f} s")
        if owned is None:
            now = owners()
            if all(now[bucket] not in (None, name) for bucket in held):
                owned = elapsed
        if published is None:
            published = first_published(topic, held_keys, since)
        time.sleep(0.05)
    victim.wait(60)
    return owned, published, len(held)


def measure(bootstrap: str, lease: float, rate: float, keys: int, repeat: int) -> dict[str, Any]:
    from relays_bench import shared, stop

    from tests.kafka_fixtures import create_topic, delete_topic
    from tests.relay_support import relay_process
    from tests.scale_support import wait

    topic = f"bench-relay-takeover-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=6)
    log_dir = Path(tempfile.mkdtemp(prefix="relay-takeover-"))
    env = {"OUTBOX_TEST_LEASE": str(lease)}
    started = 0

    def start() -> subprocess.Popen[str]:
        nonlocal started
        started += 1
        log = open(log_dir / f"relay-{started}.log", "w")  # noqa: SIM115 (the process's)
        return relay_process("-v", "2", bootstrap=bootstrap, env=env, output=log)

    relays = [start(), start()]
    names = [f"key-{n}" for n in range(keys)]
    writer = RowWriter(topic, names, rate)
    figures: dict[str, list[tuple[float, float]]] = {s: [] for s in SIGNALS}
    try:
        writer.start()
        for turn in range(repeat):
            for signame in SIGNALS:
                if not wait(lambda: shared(2), 120):
                    raise SystemExit(f"two relays did not share the buckets; logs in {log_dir}")
                victim = relays[turn % 2]
                owned, published, held = take_over(victim, topic, names, signame, lease + 120)
                figures[signame].append((owned, published))
                print(
                    f"  {signame} relay {victim.pid} (held {held} buckets): the other owns them"
                    f" after {owned:.2f} s, a row of them published after {published:.2f} s",
                    flush=True,
                )
                relays[turn % 2] = start()
    finally:
        writer.stop()
        stop(relays)
        delete_topic(bootstrap, topic)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=float, default=15.0, help="OUTBOX_LEASE_SECONDS")
    parser.add_argument("--rate", type=float, default=50.0, help="rows written per second")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from bench.seeding import bench_database
    from django_outbox.conf import outbox_settings
    from django_outbox.relay.buckets import TICK

    with bench_database(
        on_sqlite="relay buckets need PostgreSQL or MariaDB: set DATABASE_URL"
    ) as bootstrap:
        print(
            f"{connection.vendor}: 2 relays, OUTBOX_LEASE_SECONDS={args.lease:g}, "
            f"OUTBOX_POLL_INTERVAL={outbox_settings.poll_interval:g}, bucket tick {TICK:g} s, "
            f"{args.rate:g} rows/s of {args.keys} keys, OUTBOX_WAKE_RELAY off",
            flush=True,
        )
        figures = measure(bootstrap, args.lease, args.rate, args.keys, args.repeat)
    print(f"\n{'signal':8} {'owned again (median / max)':>28} {'published again':>22}  n")
    for signame, values in figures.items():
        owned = [o for o, _ in values]
        published = [p for _, p in values]
        print(
            f"{signame:8} {statistics.median(owned):>14.2f} s / {max(owned):5.2f} s"
            f" {statistics.median(published):>10.2f} s / {max(published):5.2f} s  {len(values)}"
        )


if __name__ == "__main__":
    main()
