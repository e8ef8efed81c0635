"""Pytest fixtures and helpers for tests against a real Apache Kafka broker.

Loaded from tests/conftest.py with ``pytest_plugins = ["tests.kafka_fixtures"]``.

- ``kafka_bootstrap`` (session): the broker's bootstrap address. Uses the environment variable
  KAFKA_BOOTSTRAP_SERVERS when set (CI exports it after ``scripts/kafka-local start``); otherwise
  starts the local broker with ``scripts/kafka-local start`` and, if this session started it,
  stops it at the end of the session.
- ``kafka_topic``: a fresh topic with 3 partitions for one test, deleted afterwards.
- ``kafka_broker_control``: a second, private broker for outage tests, so that stopping it
  never disturbs the shared one (other tests, or other pytest processes, may be using that).
  ``.bootstrap`` is its address (127.0.0.1:KAFKA_OUTAGE_PORT, default 19192); ``.stop()`` /
  ``.start()`` stop and restart it on the same port with the same data (topics and records
  survive); it is running again after each test. Point the code under test at ``.bootstrap``
  (e.g. with pytest-django's ``settings`` fixture). Started on first use, stopped at the end of
  the session if this session started it.
- ``kafka_cluster`` (module): the 3-node cluster of ``scripts/kafka-local cluster`` (base port
  KAFKA_CLUSTER_PORT, default 29092), a ``Cluster`` with ``.bootstrap``, ``.kill(n)``,
  ``.restart(n)``, ``.leader(topic, partition)``. Held by one test module at a time across
  pytest processes (a lock file); started on first use, stopped after the module if it started
  it. Skipped when java is missing, unless OUTBOX_REQUIRE_CLUSTER=1 (CI): then it fails.
- ``read_topic(bootstrap, topic, expected_count, timeout=30)``: read a topic from its start.
- ``topic_record_count(bootstrap, topic)``: how many records a topic holds (sum of end offsets).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "scripts" / "kafka-local"
DEFAULT_PORT = 19092
OUTAGE_PORT = int(os.environ.get("KAFKA_OUTAGE_PORT") or 19192)


# --------------------------------------------------------------------------- scripts/kafka-local


def _kafka_local(
    *args: str, port: int | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(extra_env or {})}
    if port is not None and str(port) != env.get("KAFKA_PORT", str(DEFAULT_PORT)):
        # another broker than the configured one: its own controller port and state dir
        env["KAFKA_PORT"] = str(port)
        env["KAFKA_CONTROLLER_PORT"] = str(port + 1)
        env.pop("KAFKA_STATE_DIR", None)
    return subprocess.run(
        [sys.executable, str(KAFKA_LOCAL), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,  # the first start may download the broker's jars
    )


def start_broker(port: int | None = None) -> str:
    """Start (or reuse) the local broker; return its bootstrap address. Keeps existing data."""
    result = _kafka_local("start", port=port)
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/kafka-local start failed (exit code {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout.strip().splitlines()[-1]


def stop_broker(port: int | None = None) -> None:
    """Stop the local broker (no-op when it is not running)."""
    result = _kafka_local("stop", port=port)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/kafka-local stop failed:\n{result.stdout}\n{result.stderr}")


def broker_running(port: int | None = None) -> bool:
    """True when scripts/kafka-local runs a broker on that port."""
    return _kafka_local("status", port=port).returncode == 0


# --------------------------------------------------------------------------- Kafka helpers


def unique_topic_name(label: str) -> str:
    """A new valid topic name (letters, digits, '-', '_'; at most 200 characters)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-_") or "topic"
    return f"test-{cleaned[:150]}-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap: str, topic: str, partitions: int = 3, timeout: float = 30) -> None:
    """Create a topic and wait until every partition has a leader."""
    with KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests-admin") as admin:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
        admin.wait_for_topics([topic], timeout_ms=int(timeout * 1000))


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete a topic; errors are ignored (best effort clean-up)."""
    try:
        with KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="tests-admin", request_timeout_ms=10000
        ) as admin:
            admin.delete_topics([topic], raise_errors=False)
    except Exception:  # clean-up must never fail a test
        pass


def _topic_partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions in the broker's metadata")
        time.sleep(0.1)


def read_topic(
    bootstrap: str, topic: str, expected_count: int, timeout: float = 30
) -> list[ConsumerRecord]:
    """Read ``topic`` from the earliest offset of each partition (no consumer group, nothing
    committed) until ``expected_count`` records arrived or ``timeout`` seconds passed.

    Returns the records read (possibly fewer, or more, than expected: assert on the result),
    sorted by (partition, offset); order within a partition is the order Kafka kept.
    """
    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="tests-reader",
    )
    records: list[ConsumerRecord] = []
    try:
        partitions = _topic_partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while len(records) < expected_count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = consumer.poll(timeout_ms=int(min(remaining, 1.0) * 1000))
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        consumer.close()
    return sorted(records, key=lambda record: (record.partition, record.offset))


def topic_record_count(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """The number of records in ``topic`` (sum of its partitions' end offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="tests-count")
    try:
        partitions = _topic_partitions(consumer, topic, time.monotonic() + timeout)
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker (see the module docstring)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    port = int(os.environ.get("KAFKA_PORT") or DEFAULT_PORT)
    started_here = not broker_running(port)
    address = start_broker(port)
    try:
        yield address
    finally:
        if started_here:
            stop_broker(port)


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest, kafka_bootstrap: str) -> Iterator[str]:
    """A new topic (3 partitions, replication factor 1) for this test; deleted afterwards."""
    topic = unique_topic_name(request.node.name)
    create_topic(kafka_bootstrap, topic, partitions=3)
    yield topic
    delete_topic(kafka_bootstrap, topic)


class BrokerControl:
    """Stops and starts the private scripts/kafka-local broker on ``port``."""

    def __init__(self, port: int):
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"

    def stop(self) -> None:
        stop_broker(self.port)

    def start(self) -> str:
        return start_broker(self.port)

    def is_running(self) -> bool:
        return broker_running(self.port)


@pytest.fixture(scope="session")
def _kafka_outage_broker() -> Iterator[int]:
    port = OUTAGE_PORT
    started_here = not broker_running(port)
    start_broker(port)
    try:
        yield port
    finally:
        if started_here:
            stop_broker(port)


@pytest.fixture
def kafka_broker_control(_kafka_outage_broker: int) -> Iterator[BrokerControl]:
    """A private broker that the test may stop and restart (data is kept); see the module doc."""
    control = BrokerControl(_kafka_outage_broker)
    control.start()  # a no-op when it is running
    try:
        yield control
    finally:
        control.start()


def order_inversions(records: list) -> int:
    """First copies of records that reached their partition after a later row of the same
    key (rows of one key are written in id order, so id order is key order); a duplicate
    counts once."""
    highest: dict[bytes | None, int] = {}
    seen: set[int] = set()
    inversions = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        pk = int(dict(record.headers).get("outbox_id", b"0") or 0)
        if pk in seen:
            continue
        seen.add(pk)
        if pk < highest.get(record.key, 0):
            inversions += 1
        highest[record.key] = max(highest.get(record.key, 0), pk)
    return inversions


class Cluster:
    """``scripts/kafka-local cluster``: three nodes, each broker and controller; node N is
    Kafka's broker id N."""

    def __init__(self, port: int):
        self.port = port
        self.bootstrap = ""
        self.down: set[int] = set()  # nodes killed and not restarted yet

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _kafka_local("cluster", *args, extra_env={"KAFKA_CLUSTER_PORT": str(self.port)})

    def _command(self, *args: str) -> str:
        """Run ``scripts/kafka-local cluster ARGS``; return its last stdout line."""
        result = self._run(*args)
        if result.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka-local cluster {' '.join(args)} failed (exit code "
                f"{result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return (result.stdout.strip().splitlines() or [""])[-1]

    def start(self) -> str:
        self.bootstrap = self._command("start")
        return self.bootstrap

    def stop(self) -> None:
        self._command("stop")

    def running(self) -> bool:
        """True when all three nodes run."""
        return self._run("status").returncode == 0

    def kill(self, node: int) -> None:
        """SIGKILL node ``node``'s JVM."""
        self._command("kill", str(node))
        self.down.add(node)

    def restart(self, node: int) -> None:
        """Start node ``node`` again; return once it is back in sync."""
        self._command("restart", str(node))
        self.down.discard(node)

    def live_bootstrap(self) -> str:
        """The addresses of the nodes that run."""
        addresses = enumerate(self.bootstrap.split(","), start=1)
        return ",".join(address for node, address in addresses if node not in self.down)

    def partitions(self, topic: str, timeout: float = 30) -> dict[int, dict]:
        """Partition index -> kafka-python's description (leader_id, replica_nodes, isr_nodes),
        asked of the nodes that run (retried while a node's death confuses the client)."""
        live = self.live_bootstrap()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with KafkaAdminClient(
                    bootstrap_servers=live, client_id="tests-admin", request_timeout_ms=5000
                ) as admin:
                    (described,) = admin.describe_topics([topic])
                return {p["partition_index"]: p for p in described["partitions"]}
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def leader(self, topic: str, partition: int) -> int:
        return int(self.partitions(topic)[partition]["leader_id"])


def java_missing() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") or (java_home and Path(java_home, "bin", "java").exists()):
        return None
    return "java is not installed: the cluster tests need a JDK 17+ (scripts/kafka-local)"


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[Cluster]:
    """The 3-node cluster (see the module docstring)."""
    problem = java_missing()
    if problem:
        if os.environ.get("OUTBOX_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"{problem} (OUTBOX_REQUIRE_CLUSTER=1 makes this a failure)")
        pytest.skip(problem)
    cluster = Cluster(int(os.environ.get("KAFKA_CLUSTER_PORT") or 29092))
    lock_path = Path(tempfile.gettempdir(), f"django-outbox-kafka-cluster-{cluster.port}.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            started_here = not cluster.running()
            cluster.start()
            try:
                yield cluster
            finally:
                if started_here:
                    cluster.stop()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
