#!/usr/bin/env python
"""How long the partitions of a stopped consumer wait for another member of the group.

Usage (a broker from ``scripts/kafka-local start``; a PostgreSQL or MariaDB database,
migrated here; several consumer processes on one SQLite file are not supported)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 \\
    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_takeover \\
        python bench/consumer_takeover.py [--session-timeouts 10000,45000] \\
            [--heartbeat-ms 3000] [--repeat 2]

For each session timeout: a topic of 6 partitions gets keyed events steadily
(tests/scale_support.py ``Feeder``, 30 events/s), three ``outbox_consume`` processes of
one group handle them (tests/consumer_subprocess.py, a handler writing one effect row
per event). Then, ``--repeat`` times each, one member gets SIGTERM, or SIGKILL, and is
started again once the figure is taken. Printed per stop: the seconds from the signal
until an event of each partition the member held was handled by another member (the
effect rows), and until the broker shows the group stable with every partition owned.
The other consumer options are the project's (kafka-python's defaults: range and
round-robin assignors, eager rebalancing, ``max_poll_interval_ms`` 300 s).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

PARTITIONS = 6
MEMBERS = ("consumer-0", "consumer-1", "consumer-2")


def measure(
    bootstrap: str, session_ms: int, heartbeat_ms: int, repeat: int
) -> dict[str, list[tuple[float, float]]]:
    from tests.kafka_fixtures import create_topic, delete_topic
    from tests.scale_support import (
        Feeder,
        GroupView,
        consumer_env,
        consumer_worker,
        effects,
        last_effect_id,
        partition_of,
        wait,
    )

    topic = f"bench-takeover-{uuid.uuid4().hex[:8]}"
    group = f"bench-takeover-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    options = {
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": heartbeat_ms,
        "fetch_max_wait_ms": 500,  # kafka-python's default, not the tests' 100
    }
    env = consumer_env(bootstrap, options)
    log_dir = Path(tempfile.mkdtemp(prefix="consumer-takeover-"))
    workers = {name: consumer_worker(name, topic, group, env, log_dir) for name in MEMBERS}
    view = GroupView(bootstrap, group, topic, PARTITIONS)
    feeder = Feeder(bootstrap, topic, PARTITIONS)
    figures: dict[str, list[tuple[float, float]]] = {"SIGTERM": [], "SIGKILL": []}
    limit = session_ms / 1000 + 120

    def settled() -> dict[str, set[int]]:
        owned = wait(lambda: view.settled(set(MEMBERS)), limit)
        if not owned:
            raise SystemExit(f"the group did not settle: {view.owners()}; logs in {log_dir}")
        return owned

    try:
        for worker in workers.values():
            worker.start()
        feeder.start()
        for turn in range(repeat):
            for signame in ("SIGTERM", "SIGKILL"):
                owned = settled()
                victim = MEMBERS[turn % len(MEMBERS)]
                held = owned[victim]
                worker = workers[victim]
                assert worker.process is not None
                pid = worker.process.pid
                time.sleep(2)  # events flowing through the victim's partitions meanwhile
                mark = last_effect_id()
                start = time.monotonic()
                worker.signal(getattr(signal, signame))
                others = set(MEMBERS) - {victim}
                owned_again = handled = None
                while owned_again is None or handled is None:
                    now = time.monotonic() - start
                    if now > limit:
                        raise SystemExit(f"partitions {held} not taken over; logs in {log_dir}")
                    if owned_again is None and view.settled(others):
                        owned_again = now
                    by_others = {partition_of(k) for _, _, k, _, p in effects(mark) if p != pid}
                    if handled is None and held <= by_others:
                        handled = now
                    time.sleep(0.05)
                figures[signame].append((handled, owned_again))
                print(
                    f"session {session_ms / 1000:.0f} s, {signame} {victim} (held {sorted(held)}):"
                    f" group stable with all partitions owned after {owned_again:.1f} s,"
                    f" handled again by another member after {handled:.1f} s",
                    flush=True,
                )
                worker.process.wait(timeout=60)
                worker.reaped()
                worker.start()
    finally:
        feeder.stop()
        for worker in workers.values():
            worker.kill_all()
        view.close()
        delete_topic(bootstrap, topic)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session-timeouts", default="10000,45000", help="ms, comma-separated")
    parser.add_argument("--heartbeat-ms", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from bench.seeding import bench_database
    from tests.scale_support import create_effect_table

    summary = []
    with bench_database(
        on_sqlite="run it on PostgreSQL or MariaDB (DATABASE_URL=...)"
    ) as bootstrap:
        create_effect_table()
        for session_ms in (int(v) for v in args.session_timeouts.split(",")):
            figures = measure(bootstrap, session_ms, args.heartbeat_ms, args.repeat)
            for signame, values in figures.items():
                handled = [h for h, _ in values]
                owned = [o for _, o in values]
                summary.append(
                    f"session_timeout_ms={session_ms} heartbeat_interval_ms={args.heartbeat_ms} "
                    f"{signame}: handled again after median {statistics.median(handled):.1f} s "
                    f"(max {max(handled):.1f}), all partitions owned after median "
                    f"{statistics.median(owned):.1f} s (max {max(owned):.1f}), n={len(values)}"
                )
    print("\n".join(["", f"{connection.vendor}, 3 members, {PARTITIONS} partitions:", *summary]))


if __name__ == "__main__":
    main()
