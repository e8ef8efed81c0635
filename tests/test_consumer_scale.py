"""Several ``outbox_consume`` processes in one group, members killed, added and stopped
while events flow (issue 18, section 2).

A topic of 6 partitions gets keyed events steadily (tests/scale_support.py ``Feeder``: 3
keys per partition, a sequence number per key). Three consumers of one group run the real
command (tests/consumer_subprocess.py); their handler writes one effect row per event in
the handled transaction. Then: one is SIGKILLed, a fourth starts, one gets SIGTERM. After
each change the group must settle with every partition owned (the broker's DescribeGroups)
and every partition's events must be handled again (new effect rows). At the end, once
the feeder stopped and everything drained: each event's effect exactly once, no key's
sequence numbers out of order in the effect rows, no consumer exited but the ones the
test stopped (the SIGTERMed ones with 0), and the group's committed offsets at the end of
every partition. Before the fourth member joins, a backlog of 3,000 events is published
at once, so that the group rebalances while its members read full polls. The time each
settling took is printed, not asserted (see bench/consumer_takeover.py for figures).
The commit on revoke itself is pinned by tests/test_consumer_rebalance.py.

SQLite is skipped: several writer processes on one SQLite file is not a setup the project
supports (one consumer process per SQLite database, see docs/consumer.rst).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from kafka import KafkaConsumer, TopicPartition

from tests.chaos_harness import describe_exit
from tests.consumer_support import committed_offsets, unique_group
from tests.kafka_fixtures import create_topic, delete_topic, unique_topic_name
from tests.scale_support import (
    EFFECT_TABLE,
    Feeder,
    GroupView,
    consumer_env,
    consumer_worker,
    create_effect_table,
    drop_effect_table,
    duplicates,
    effects,
    inversions,
    last_effect_id,
    partition_of,
    wait,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PARTITIONS = 6
NAMES = ("consumer-0", "consumer-1", "consumer-2", "consumer-3")
#: Generous on a busy 2-core machine; the group needs one session timeout (6 s) after a kill.
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0
EXIT_TIMEOUT = 45.0
DRAIN_TIMEOUT = 60.0
#: Rounds of the feeder (one event per partition each) published at once, mid-run.
BACKLOG_ROUNDS = 500


@pytest.fixture
def effect_table(vendor: str) -> Iterator[None]:
    if vendor == "sqlite":
        pytest.skip(
            "several consumer processes writing one SQLite file is not a supported setup; "
            "run with DATABASE_URL=postgres://... or mysql://..."
        )
    create_effect_table()
    try:
        yield
    finally:
        connection.close()  # the feeder thread's writes are in; start clean
        drop_effect_table()


class Scale:
    """The run: the workers, the group's view, the feeder, and what was seen."""

    def __init__(self, bootstrap: str, topic: str, group: str, log_dir: Path):
        env = consumer_env(bootstrap)
        self.workers = {name: consumer_worker(name, topic, group, env, log_dir) for name in NAMES}
        self.view = GroupView(bootstrap, group, topic, PARTITIONS)
        self.feeder = Feeder(bootstrap, topic, PARTITIONS)
        self.members: set[str] = set()
        self.stopped: dict[str, str] = {}  # name -> why (kill, term)
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        print(f"{time.monotonic() - self.t0:6.1f}s {message}", flush=True)

    def check_alive(self) -> None:
        """Fail at once when a member exited that the test did not stop."""
        for name in self.members:
            worker = self.workers[name]
            if not worker.running():
                code = worker.process.poll() if worker.process else None
                raise AssertionError(
                    f"{name} exited on its own with {code}; {describe_exit(worker.log_path)}"
                )

    def start(self, name: str) -> None:
        worker = self.workers[name]
        worker.start()
        self.members.add(name)
        started = wait(lambda: self.check_alive() or worker.ready(), START_TIMEOUT)
        assert started, f"{name} did not start within {START_TIMEOUT:.0f}s"
        self.say(f"{name} started (pid {worker.process.pid})")

    def kill(self, name: str) -> None:
        worker = self.workers[name]
        self.members.discard(name)
        self.stopped[name] = "kill"
        worker.signal(signal.SIGKILL)
        code = worker.process.wait(timeout=EXIT_TIMEOUT)
        assert code == -signal.SIGKILL, describe_exit(worker.log_path)
        worker.reaped()
        self.say(f"{name} SIGKILLed")

    def terminate(self, name: str) -> None:
        worker = self.workers[name]
        self.members.discard(name)
        self.stopped[name] = "term"
        worker.signal(signal.SIGTERM)
        try:
            code = worker.process.wait(timeout=EXIT_TIMEOUT)
        except Exception as exc:
            raise AssertionError(
                f"{name} did not exit within {EXIT_TIMEOUT:.0f}s of SIGTERM; "
                + describe_exit(worker.log_path)
            ) from exc
        log = worker.log_path.read_text(errors="replace")
        worker.reaped()
        assert code == 0, f"{name} exited {code} after SIGTERM; {describe_exit(worker.log_path)}"
        assert "outbox consumer stopped" in log, log[-2000:]
        self.say(f"{name} exited 0 after SIGTERM")

    def settle(self, why: str) -> None:
        """The group stable with the members alive, each partition owned; then each
        partition's events handled again after this moment."""
        since, mark = time.monotonic(), last_effect_id()
        owned = wait(lambda: self.check_alive() or self.view.settled(self.members), SETTLE_TIMEOUT)
        assert owned, (
            f"after {why}: the group did not settle with {sorted(self.members)} owning all "
            f"{PARTITIONS} partitions within {SETTLE_TIMEOUT:.0f}s; last seen {self.view.owners()}"
        )
        settled = time.monotonic() - since
        handled = wait(lambda: self.check_alive() or self.partitions_handled_after(mark), 60)
        assert handled, f"after {why}: not every partition was handled again within 60s"
        self.say(
            f"after {why}: every partition owned after {settled:.1f}s "
            f"({', '.join(f'{n}={sorted(p)}' for n, p in sorted(owned.items()))}), "
            f"and handled again after {time.monotonic() - since:.1f}s"
        )

    def partitions_handled_after(self, mark: int) -> bool:
        return {partition_of(key) for _, _, key, _, _ in effects(mark)} == set(range(PARTITIONS))

    def drained(self) -> bool:
        self.check_alive()
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(DISTINCT event_id) FROM {EFFECT_TABLE}")
            (distinct,) = cursor.fetchone()
        return distinct >= len(self.feeder.published)

    def close(self) -> None:
        self.feeder.stop()
        for worker in self.workers.values():
            worker.kill_all()
        self.view.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    client = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in client.end_offsets(partitions).items()}
    finally:
        client.close()


def test_members_killed_added_and_stopped_while_events_flow(
    kafka_bootstrap, settings, tmp_path, effect_table
):
    settings.OUTBOX_WAKE_RELAY = False
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    topic, group = unique_topic_name("scale"), unique_group()
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    run = Scale(kafka_bootstrap, topic, group, tmp_path)
    try:
        for name in NAMES[:3]:
            run.start(name)
        run.feeder.start()
        run.settle("3 members started")
        run.kill("consumer-0")
        run.settle("SIGKILL of consumer-0")
        # The group grows while its members read a backlog (full polls).
        run.feeder.burst(BACKLOG_ROUNDS)
        mark = last_effect_id()
        assert wait(lambda: run.check_alive() or last_effect_id() > mark + 200, 60), "no backlog"
        run.start("consumer-3")
        run.settle("consumer-3 joined")
        run.terminate("consumer-1")
        run.settle("SIGTERM of consumer-1")

        run.feeder.stop()
        assert run.feeder.error is None, repr(run.feeder.error)
        published = dict(run.feeder.published)
        assert wait(run.drained, DRAIN_TIMEOUT, step=0.5), "not drained"
        run.say(f"drained: {len(published)} events published")
        for name in sorted(run.members):
            run.terminate(name)
        run.members.clear()

        rows = effects()
        missing = set(published) - {event_id for _, event_id, *_ in rows}
        assert not missing, f"{len(missing)} events without effect"
        assert not duplicates(rows), f"effects more than once: {duplicates(rows)}"
        assert {event_id for _, event_id, *_ in rows} == set(published)
        assert inversions(rows) == [], inversions(rows)[:10]
        assert {pid for *_, pid in rows} and len({pid for *_, pid in rows}) >= 3
        assert committed_offsets(topic, group, PARTITIONS) == end_offsets(kafka_bootstrap, topic)
        revoke_commits = sum(
            path.read_text(errors="replace").count("before giving them up")
            for path in tmp_path.glob("consumer-*.log")
        )
        run.say(
            f"{len(rows)} effects of {len(published)} events, "
            f"{len({pid for *_, pid in rows})} processes, {revoke_commits} commits on revoke"
        )
    finally:
        run.close()
        delete_topic(kafka_bootstrap, topic)
