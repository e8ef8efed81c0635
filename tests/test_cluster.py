"""The outbox on a real 3-node Kafka cluster (``scripts/kafka-local cluster``), through the
real commands: ``outbox_topics --create`` with replication 3 and ``min.insync.replicas=2``;
``outbox_relay`` as a subprocess while the leader of a partition is SIGKILLed under load;
``outbox_consume`` while its group's coordinator is SIGKILLed.

PostgreSQL only (DATABASE_URL=postgres://...): CI runs them once, in its PostgreSQL run.
The cluster is the ``kafka_cluster`` fixture's (tests/kafka_fixtures.py; KAFKA_CLUSTER_PORT,
default 29092). Figures (how long a partition stopped while its leader moved) are printed.

Run: DATABASE_URL=postgres://... .venv/bin/python -m pytest tests/test_cluster.py -s
"""

from __future__ import annotations

import io
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connections, transaction

from django_outbox.envelope import HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, Status
from django_outbox.publish.write import publish_event
from testproject.chat.models import Conversation
from tests.consumer_support import COUNTER, consumer_process, send_rows, unique_group
from tests.kafka_fixtures import Cluster, delete_topic, read_topic, unique_topic_name
from tests.relay_support import relay_process, wait_for

ON_POSTGRESQL = django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.kafka,
    pytest.mark.skipif(
        not ON_POSTGRESQL,
        reason="the cluster tests run on PostgreSQL only (DATABASE_URL=postgres://...), "
        "once per CI run",
    ),
]


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def cluster_topic(request, settings, kafka_cluster: Cluster) -> Iterator[str]:
    """A new topic, the outbox's only one, created by ``outbox_topics --create`` with 3
    partitions, replication 3 and min.insync.replicas=2; deleted afterwards."""
    topic = unique_topic_name(request.node.name)
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_cluster.bootstrap
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEFAULT_TOPIC = topic
    out, err = run(
        "outbox_topics", "--create", "--partitions", "3",
        "--replication-factor", "3", "--min-insync-replicas", "2",
    )  # fmt: skip
    assert f"created {topic}" in out and err == ""
    yield topic
    delete_topic(kafka_cluster.bootstrap, topic)


def test_topics_replicated_three_times_and_single_copies_warned(
    settings, kafka_cluster, cluster_topic
):
    partitions = kafka_cluster.partitions(cluster_topic)
    assert sorted(len(p["replica_nodes"]) for p in partitions.values()) == [3, 3, 3]
    with pytest.raises(CommandError, match="--replication-factor 4 needs 4 brokers; the clus"):
        run("outbox_topics", "--create", "--partitions", "1", "--replication-factor", "4")

    single = unique_topic_name("single-copy")
    settings.OUTBOX_TOPICS = {"cluster.single": single}
    try:
        _, err = run("outbox_topics", "--create", "--partitions", "1", "--replication-factor", "1")
        assert f"warning: topic {single} has replication factor 1 on a cluster of 3 brokers" in err
        assert cluster_topic not in err
        with pytest.raises(CommandError, match="django_outbox.W050"):
            run("check", "--deploy", "--fail-level", "WARNING", "--tag", "django_outbox")
    finally:
        delete_topic(kafka_cluster.bootstrap, single)


class Publisher(threading.Thread):
    """Publishes events (``publish_event`` in a transaction) at a steady rate, over a few
    keys, until stopped."""

    def __init__(self, rate: float, keys: int):
        super().__init__(name="publisher", daemon=True)
        self.rate, self.keys = rate, keys
        self.stopping = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        due = time.monotonic()
        try:
            while not self.stopping.is_set():
                with transaction.atomic():
                    key = f"key-{self.count % self.keys}"
                    publish_event("cluster.tick", {"n": self.count}, key=key)
                self.count += 1
                due += 1 / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        if self.error:
            raise self.error


def gaps(times: list[datetime]) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of the gaps between consecutive ``times``."""
    stamps = sorted(t.timestamp() for t in times)
    return list(zip(stamps, stamps[1:], strict=False))


@contextmanager
def worker(
    cluster: Cluster, log_path: Path, start: Callable[[IO[str]], subprocess.Popen[str]]
) -> Iterator[subprocess.Popen[str]]:
    """A worker subprocess (``start(log)``) logging to ``log_path``. On the way out it is
    stopped with SIGTERM (SIGKILL after 30 s) and the cluster made whole again; a body that
    succeeded also asserts the worker was still running, then exited 0."""
    with open(log_path, "w") as log:
        process = start(log)
    try:
        yield process
        assert process.poll() is None, f"the worker exited: {log_path.read_text()[-5000:]}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for node in sorted(cluster.down):
            cluster.restart(node)
    assert process.returncode == 0, log_path.read_text()[-5000:]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_partition_leader_killed_under_load(kafka_cluster, cluster_topic, tmp_path, capsys):
    """SIGKILL the leader of partition 0 while the relay publishes 40 events/s, restart it:
    records keep flowing once leadership moved, every row is published and in the topic
    (acks=all from the in-sync replicas: nothing acknowledged is lost with the leader), none
    dead, each key's records in outbox id order, the relay still running."""
    cluster, topic = kafka_cluster, cluster_topic
    log_path = tmp_path / "relay.log"
    publisher = Publisher(rate=40, keys=12)
    rows = OutboxMessage.objects.all()

    def relay(log: IO[str]) -> subprocess.Popen[str]:
        return relay_process("--interval", "0.1", bootstrap=cluster.bootstrap, output=log)

    with worker(cluster, log_path, relay):
        try:
            publisher.start()
            published = OutboxMessage.objects.filter(status=Status.PUBLISHED)
            wait_for(lambda: published.count() >= 80, 60, "the relay to publish 80 rows")
            before = cluster.partitions(topic)
            victim = before[0]["leader_id"]
            led = sorted(p for p, info in before.items() if info["leader_id"] == victim)
            killed_at = time.time()
            cluster.kill(victim)
            wait_for(lambda: cluster.leader(topic, 0) not in (victim, -1), 30, "a new leader")
            moved_after = time.time() - killed_at
            new_leader = cluster.leader(topic, 0)
            time.sleep(max(0.0, 12 - moved_after))  # keep publishing on the two nodes left
            restart_started = time.time()
            cluster.restart(victim)
            restarted = time.time() - restart_started
            time.sleep(3)
        finally:
            publisher.stop()
        wait_for(lambda: not rows.filter(status=Status.PENDING).exists(), 60, "no row left pending")
    relay_log = log_path.read_text()
    total = publisher.count
    assert rows.count() == total
    assert not rows.filter(status=Status.DEAD).exists(), relay_log[-5000:]
    assert rows.filter(status=Status.PUBLISHED).count() == total

    records = read_topic(cluster.bootstrap, topic, total, timeout=60)
    ids = [int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records]
    expected = set(rows.values_list("pk", flat=True))
    assert expected - set(ids) == set(), "rows published but not in the topic"
    order_breaks = []
    partition_of: dict[int, int] = {}
    last_by_key: dict[tuple[int, bytes], int] = {}
    seen: set[int] = set()
    for record, pk in zip(records, ids, strict=True):
        partition_of.setdefault(pk, record.partition)
        if pk in seen:
            continue
        seen.add(pk)
        slot = (record.partition, record.key)
        if last_by_key.get(slot, 0) > pk:
            order_breaks.append((record.partition, record.key, last_by_key[slot], pk))
        last_by_key[slot] = pk
    assert order_breaks == [], "same-key records out of outbox id order"

    times: dict[int, list[datetime]] = defaultdict(list)
    for pk, updated in rows.values_list("pk", "updated_at"):
        times[partition_of[pk]].append(updated)
    # the longest pause in the 30 s after the kill, on the partitions the dead node led;
    # and, to compare, the longest one on the same partitions in the 5 s before it
    after = [b - a for p in led for a, b in gaps(times[p]) if b > killed_at > a - 30]
    pause = max(after, default=0.0)
    calm = max(
        (b - a for p in led for a, b in gaps(times[p]) if killed_at - 5 <= a and b <= killed_at),
        default=0.0,
    )
    with capsys.disabled():
        print(
            f"\ncluster: killed node {victim} (leader of partition(s) {led}); partition 0's "
            f"new leader: node {new_leader}, seen in metadata {moved_after:.1f} s after the "
            f"kill; longest pause in publishing on those partitions in the 30 s after the "
            f"kill: {pause:.1f} s (in the 5 s before: {calm:.1f} s); restart until back in "
            f"sync: {restarted:.1f} s; {total} rows, {len(ids) - len(seen)} duplicate records"
        )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_group_coordinator_killed_while_consuming(kafka_cluster, cluster_topic, tmp_path, capsys):
    """SIGKILL the node that coordinates ``outbox_consume``'s group (the leader of the one
    ``__consumer_offsets`` partition) while records arrive, restart it: every event handled
    exactly once (the handler counts, and is not idempotent), every row consumed, and the
    consumer still running, then stopping with exit code 0."""
    cluster, topic = kafka_cluster, cluster_topic
    conversation = Conversation.objects.create(title="coordinator killed")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(600)]
    group = unique_group()
    log_path = tmp_path / "consumer.log"

    def consumer(log: IO[str]) -> subprocess.Popen[str]:
        return consumer_process(cluster.bootstrap, "--topic", topic, "--group", group, output=log)

    handled = Conversation.objects.filter(pk=conversation.pk)

    def count() -> int:
        return handled.values_list("message_count", flat=True)[0]

    sender_error: list[BaseException] = []

    def send_steadily() -> None:  # 600 records over ~30 s, as a relay would send them
        try:
            for start in range(0, len(rows), 20):
                send_rows(cluster.live_bootstrap(), topic, rows[start : start + 20])
                time.sleep(1)
        except BaseException as exc:
            sender_error.append(exc)

    sender = threading.Thread(target=send_steadily, name="sender", daemon=True)
    with worker(cluster, log_path, consumer):
        sender.start()
        wait_for(lambda: count() >= 60, 60, "the consumer to handle 60 events")
        coordinator = cluster.leader("__consumer_offsets", 0)
        killed_at = time.time()
        handled_at_kill = count()
        cluster.kill(coordinator)
        wait_for(lambda: count() > handled_at_kill + 40, 60, "handling to go on")
        resumed_after = time.time() - killed_at
        time.sleep(max(0.0, 12 - resumed_after))
        cluster.restart(coordinator)
        sender.join(90)
        assert not sender_error, sender_error
        wait_for(lambda: count() >= len(rows), 60, "every event handled")
        time.sleep(2)  # a duplicate handling would show now
    assert count() == len(rows), log_path.read_text()[-5000:]
    assert OutboxMessage.objects.consumed().count() == len(rows)
    with capsys.disabled():
        print(
            f"\ncluster: killed node {coordinator} (the group coordinator) after "
            f"{handled_at_kill} events; 40 more handled {resumed_after:.1f} s after the kill; "
            f"{len(rows)} events handled once each"
        )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_nothing_published_while_fewer_replicas_than_min_insync(
    settings, kafka_cluster, tmp_path, capsys
):
    """acks=all, not acks=1: on a topic with 2 replicas and min.insync.replicas=2 whose
    follower is SIGKILLed, the leader alone takes no write, so the relay marks no row
    published (nor spends a retry: it waits for the acknowledgement) until the follower is
    back in sync; then every row is published and in the topic."""
    cluster = kafka_cluster
    topic = unique_topic_name("min-insync")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = cluster.bootstrap
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEFAULT_TOPIC = topic
    run(
        "outbox_topics", "--create", "--partitions", "1",
        "--replication-factor", "2", "--min-insync-replicas", "2",
    )  # fmt: skip

    def relay(log: IO[str]) -> subprocess.Popen[str]:
        return relay_process("--interval", "0.1", bootstrap=cluster.bootstrap, output=log)

    rows = OutboxMessage.objects.all()
    try:
        with worker(cluster, tmp_path / "relay.log", relay):
            publish_event("cluster.tick", {"n": -1}, key="warm-up")
            wait_for(lambda: not rows.filter(status=Status.PENDING).exists(), 60, "the warm-up")
            (partition,) = cluster.partitions(topic).values()
            follower = next(n for n in partition["replica_nodes"] if n != partition["leader_id"])
            cluster.kill(follower)
            wait_for(
                lambda: len(cluster.partitions(topic)[0]["isr_nodes"]) == 1,
                30,
                "the ISR to shrink",
            )
            for n in range(20):
                publish_event("cluster.tick", {"n": n}, key=f"key-{n % 4}")
            time.sleep(8)  # the relay tries, and retries
            waiting = rows.filter(status=Status.PENDING)
            assert waiting.count() == 20 and not rows.filter(status=Status.DEAD).exists()
            # unacknowledged is not a failure of the rows: no retry spent on them
            assert not waiting.filter(retry_count__gt=0).exists()
            cluster.restart(follower)
            restarted_at = time.time()
            wait_for(lambda: not waiting.exists(), 60, "every row published once in sync")
            published_after = time.time() - restarted_at
        assert rows.filter(status=Status.PUBLISHED).count() == 21
        records = read_topic(cluster.bootstrap, topic, 21, timeout=30)
        in_topic = {int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records}
        assert in_topic == set(rows.values_list("pk", flat=True))
    finally:
        delete_topic(cluster.bootstrap, topic)
    with capsys.disabled():
        print(
            "\ncluster: 20 rows held pending while 1 replica was in sync; published "
            f"{published_after:.1f} s after the follower was back in sync"
        )
