"""Several ``outbox_consume`` processes in one group: what tests/test_consumer_scale.py and
bench/consumer_takeover.py share.

- ``EFFECT_TABLE``: one row per handled event, written by ``record_effect`` (the handler of
  ``EVENT_TYPE``, registered in tests/consumer_subprocess.py) inside the consumer's
  transaction: event id, key, the key's sequence number, the handling process. No unique
  constraint, so a handler that ran twice shows as two rows; ``id`` gives the order in
  which the rows were written.
- ``Feeder``: a thread that publishes keyed events steadily, as outbox rows sent to the
  topic as the relay sends them, each key to a partition of its own (``KEYS_PER_PARTITION``
  keys per partition, named ``p<partition>-k<n>``) with a sequence number per key.
- ``GroupView``: who owns which partition, from the broker (DescribeGroups).
- ``consumer_worker``: an ``outbox_consume`` process (tests/chaos_harness.py's ``Worker``),
  its client id set to its name so that the group's members can be told apart.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from kafka import KafkaAdminClient

from django_outbox import publish_event
from django_outbox.kafka import record_headers
from tests.consumer_support import FAST_GROUP, producer
from tests.relay_support import REPO_ROOT, database_url

EVENT_TYPE = "scale.step"
EFFECT_TABLE = "scale_effect"
KEYS_PER_PARTITION = 3
SUBPROCESS = REPO_ROOT / "tests" / "consumer_subprocess.py"

_ID = {
    "postgresql": "id bigserial PRIMARY KEY",
    "mysql": "id bigint AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "id integer PRIMARY KEY AUTOINCREMENT",
}


def create_effect_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {EFFECT_TABLE}")
        cursor.execute(
            f"CREATE TABLE {EFFECT_TABLE} ({_ID[connection.vendor]},"
            " event_id varchar(36) NOT NULL, event_key varchar(40) NOT NULL,"
            " seq integer NOT NULL, pid integer NOT NULL)"
        )


def drop_effect_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {EFFECT_TABLE}")


def record_effect(event: Any) -> None:
    """The handler: one effect row, in the transaction that marks the event handled."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EFFECT_TABLE} (event_id, event_key, seq, pid) VALUES (%s, %s, %s, %s)",
            [str(event.event_id), event.data["key"], event.data["seq"], os.getpid()],
        )


def effects(after_id: int = 0) -> list[tuple[int, str, str, int, int]]:
    """``(id, event_id, key, seq, pid)`` of the effect rows after ``after_id``, by id."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, event_id, event_key, seq, pid FROM {EFFECT_TABLE}"
            " WHERE id > %s ORDER BY id",
            [after_id],
        )
        return list(cursor.fetchall())


def last_effect_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(id) FROM {EFFECT_TABLE}")
        (value,) = cursor.fetchone()
    return int(value or 0)


def partition_of(key: str) -> int:
    return int(key.split("-")[0][1:])


def inversions(rows: list[tuple[int, str, str, int, int]]) -> list[str]:
    """Keys whose sequence numbers, in effect-row order, go backwards (with where)."""
    last: dict[str, int] = {}
    found = []
    for row_id, _, key, seq, _ in rows:
        if seq < last.get(key, -1):
            found.append(f"{key}: seq {seq} (row {row_id}) after seq {last[key]}")
        last[key] = max(seq, last.get(key, -1))
    return found


def duplicates(rows: list[tuple[int, str, str, int, int]]) -> dict[str, int]:
    counts = Counter(event_id for _, event_id, *_ in rows)
    return {event_id: n for event_id, n in counts.items() if n > 1}


class Feeder(threading.Thread):
    """Publishes one event per partition every ``interval`` seconds, until ``stop()``.

    Each round (or burst of rounds) writes its outbox rows in one transaction, then
    sends them (acks=all) and waits for the acks before the next, so each key's
    records are in the topic in sequence order.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, interval: float = 0.2):
        super().__init__(name="scale-feeder", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.interval = interval
        self.published: dict[str, str] = {}  # event id -> key
        self.sequence: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._stop_requested = threading.Event()
        self._burst = 0

    def burst(self, rounds: int) -> None:
        """Publish ``rounds`` rounds at once, next time: a backlog for the consumers."""
        self._burst = rounds

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=60)

    def run(self) -> None:
        try:
            with producer(self.bootstrap) as client:
                round_number = 0
                while not self._stop_requested.is_set():
                    rounds, self._burst = max(self._burst, 1), 0
                    self._rounds(client, range(round_number, round_number + rounds))
                    round_number += rounds
                    self._stop_requested.wait(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()

    def _rounds(self, client: Any, round_numbers: range) -> None:
        rows = []
        with transaction.atomic():
            for round_number in round_numbers:
                for partition in range(self.partitions):
                    key = f"p{partition}-k{round_number % KEYS_PER_PARTITION}"
                    self.sequence[key] += 1
                    data = {"key": key, "seq": self.sequence[key]}
                    rows.append(publish_event(EVENT_TYPE, data, key=key, topic=self.topic))
        futures = [
            client.send(
                self.topic,
                key=row.message_key.encode(),
                value=row.payload.encode(),
                headers=record_headers(row, "default", dict(row.event.headers)),
                partition=partition_of(row.message_key),
            )
            for row in rows
        ]
        client.flush()
        for future in futures:
            future.get(timeout=30)
        for row in rows:
            self.published[str(row.event.event_id)] = row.message_key


class GroupView:
    """The group's members and their partitions, as the broker tells them."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int):
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scale-watch")
        self.group = group
        self.topic = topic
        self.partitions = set(range(partitions))

    def close(self) -> None:
        self.admin.close()

    def owners(self) -> tuple[str, dict[str, set[int]]]:
        """The group's state, and the partitions of each member by client id."""
        description = self.admin.describe_groups([self.group])[self.group]
        owned: dict[str, set[int]] = defaultdict(set)
        for member in description.get("members") or ():
            owned[member["client_id"]] |= _assigned(member.get("member_assignment"), self.topic)
        return str(description.get("group_state")), dict(owned)

    def settled(self, members: set[str]) -> dict[str, set[int]] | None:
        """The assignment once the group is stable with exactly ``members``, each
        partition owned once; None before."""
        state, owned = self.owners()
        if state != "Stable" or set(owned) != members:
            return None
        every = [p for parts in owned.values() for p in parts]
        if sorted(every) != sorted(self.partitions):
            return None
        return owned


def _assigned(assignment: Any, topic: str) -> set[int]:
    if not assignment:
        return set()
    found: set[int] = set()
    for entry in assignment.get("assigned_partitions") or assignment.get("partitions") or ():
        if isinstance(entry, dict):
            if entry.get("topic") == topic:
                found.update(entry.get("partitions") or ())
        else:  # (topic, [partitions])
            name, partitions = entry
            if name == topic:
                found.update(partitions)
    return found


def consumer_env(bootstrap: str, options: dict[str, Any] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        {
            "DATABASE_URL": database_url("default"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PYTHONUNBUFFERED": "1",
            "OUTBOX_TEST_CONSUMER_OPTIONS": json.dumps({**FAST_GROUP, **(options or {})}),
        }
    )
    return env


def consumer_worker(name: str, topic: str, group: str, env: dict[str, str], log_dir: Path) -> Any:
    """A ``Worker`` running ``outbox_consume`` as ``name`` (not started yet)."""
    from tests.chaos_harness import Worker  # the harness needs pytest; the subprocess not

    argv = [sys.executable, str(SUBPROCESS), "--topic", topic, "--group", group]
    argv += ["--batch-size", "20", "--poll-timeout", "0.5", "--progress-interval", "5"]
    return Worker(name, argv, {**env, "OUTBOX_TEST_CLIENT_ID": name}, log_dir)


def wait(condition: Any, timeout: float, step: float = 0.25) -> Any:
    """``condition()``'s first true value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)
