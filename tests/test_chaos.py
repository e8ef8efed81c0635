"""Chaos on PostgreSQL against a real broker: the outbox's promise under faults.

Writers (tests/chaos_support.py) publish events in transactions with a business row, some
rolled back on purpose; 2 relays (``manage.py outbox_relay``) and 2 consumers
(``manage.py outbox_consume`` with a handler that records one effect row per event) run
as subprocesses. A supervisor follows a fault schedule drawn from a seed: relays and
consumers SIGKILLed and restarted, one relay and one consumer stopped with SIGTERM (and
restarted), one writer SIGKILLed inside an open transaction, the broker (our own, on
OUTBOX_CHAOS_KAFKA_PORT) stopped for 20 s, PostgreSQL backends of the test database
terminated (a database blip). Then the writers stop, and everything drains.

Asserted, from the ledger (the business rows), the effects table, the outbox rows and
the topic: lost 0 (committed events without effect), duplicate effects 0, phantom
effects 0 (effects of rolled-back events), phantom records 0 (rolled-back events in
Kafka), stuck 0 (rows not consumed), dead 0, business row and outbox row together or not
at all, no worker exit but the ones the supervisor caused, every SIGTERM exit 0, and no
same-key order inversion in the topic (relays share the keys by bucket, decision 0003,
and keep a key's order through failures, relay/keyorder.py; OUTBOX_CHAOS_REQUIRE_ORDER=0
only counts and prints them).
The raw duplicate-record rate of the topic is printed, not asserted. The last line printed:
``chaos: seed=... committed=... lost=0 ...``. tests/test_cluster_chaos.py runs the same
harness with 3 relays and 3 consumers on the 3-node cluster.

Environment:
    OUTBOX_CHAOS_SEED           the schedule's seed (default: random; always printed)
    OUTBOX_CHAOS_SECONDS        chaos + drain budget (default 120: ~2/3 chaos, ~1/3 drain)
    OUTBOX_CHAOS_OUTAGE         seconds the broker (the cluster: one node) stays down (default 20)
    OUTBOX_CHAOS_RATE           events per second per writer (default 15)
    OUTBOX_CHAOS_DB_BLIPS       database blips (default 2)
    OUTBOX_CHAOS_WAKE           on (default) or off: whether the writers' commits wake the relays
    OUTBOX_CHAOS_PRODUCER       JSON of kafka-python producer options for relays and writers
    OUTBOX_CHAOS_KAFKA_PORT     the private broker's port (default 19392; controller +1)
    OUTBOX_CHAOS_LOG_DIR        where worker logs and the timeline go (default: tmp_path)
    OUTBOX_CHAOS_RESTART_UNEXPECTED=1  also restart workers that exited unexpectedly (they
                                still fail the test; the other invariants get measured)

Clean-up, as a CI background job too: workers get stdin from /dev/null and a process group
each, and every group is SIGKILLed at the end whatever happened; the kernel SIGKILLs them
if the pytest process dies (PR_SET_PDEATHSIG); SIGTERM/SIGHUP to pytest unwind the test, so
the broker is stopped too. One chaos run at a time per broker port (a lock file).

Run: DATABASE_URL=postgres://... .venv/bin/python -m pytest -m chaos -s
"""

from __future__ import annotations

import fcntl
import json
import random
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from django_outbox.envelope import Event
from django_outbox.models import OutboxMessage, Status
from tests.chaos_fixtures import run_and_judge
from tests.chaos_harness import BrokerOutage, Chaos, env_float, plan
from tests.chaos_support import EFFECT_TABLE, EVENT_TYPE, LEDGER_TABLE
from tests.kafka_fixtures import (
    create_topic,
    delete_topic,
    start_broker,
    stop_broker,
    unique_topic_name,
)

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

pytestmark = pytest.mark.chaos
on_postgresql = pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="the chaos test runs on PostgreSQL only (DATABASE_URL=postgres://...): it "
    "terminates database backends and relies on concurrent writers",
)


@pytest.fixture
def chaos_port() -> Iterator[int]:
    """The private broker's port, held by one chaos run at a time on this host (two runs
    would stop each other's broker)."""
    port = int(env_float("OUTBOX_CHAOS_KAFKA_PORT", 19392))
    with open(Path(tempfile.gettempdir(), f"django-outbox-kafka-{port}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield port
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.kafka
def test_chaos(chaos_tables, chaos_port, interruptible, chaos_budget, capsys):
    port = chaos_port
    bootstrap = start_broker(port)
    topic = unique_topic_name(f"chaos-{chaos_budget.seed}")
    create_topic(bootstrap, topic, partitions=3)
    harness = Chaos(chaos_budget.seed, chaos_budget.log_dir, bootstrap, topic, BrokerOutage(port))
    try:
        run_and_judge(harness, chaos_budget, capsys)
    finally:
        try:
            delete_topic(bootstrap, topic)
        finally:
            stop_broker(port)


def test_the_plan_is_a_function_of_the_seed():
    first, again, other = (plan(random.Random(seed), 80, 20, 2) for seed in (7, 7, 8))
    assert first == again and [a.kind for a in first] == [a.kind for a in again]
    assert [(a.at, a.target) for a in first] != [(a.at, a.target) for a in other]
    kinds = Counter(action.kind for action in first)
    assert kinds["term"] == 2 and kinds["hang"] == 1 and kinds["outage"] == 1
    assert kinds["blip"] == 2 and kinds["kill"] >= 5


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_the_verdict_names_each_planted_fault(chaos_tables, tmp_path):
    """The checks of ``Chaos.verify`` on a run with one fault of each kind planted."""
    harness = Chaos(0, tmp_path, "127.0.0.1:1", "chaos-topic", BrokerOutage(1))
    harness.require_order = True
    ids = {name: str(uuid.uuid4()) for name in "ABCDEFGHIJ"}

    def row(name: str, status: str, ledger: bool = True) -> None:
        event = Event(event_type=EVENT_TYPE, data={}, key="k", event_id=uuid.UUID(ids[name]))
        message = OutboxMessage.objects.create(
            event_type=EVENT_TYPE, topic="chaos-topic", message_key="k",
            payload=event.to_json(), status=status,
        )  # fmt: skip
        if ledger:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {LEDGER_TABLE} VALUES (%s, %s, 'writer-0', 1)",
                    [ids[name], message.pk],
                )

    def effect(name: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {EFFECT_TABLE} (event_id, consumer, pid) VALUES (%s, 'c', 1)",
                [ids[name]],
            )

    for name in "ABCI":  # I: rolled back according to its writer
        row(name, Status.CONSUMED)
    row("E", Status.PUBLISHED)
    row("F", Status.DEAD)
    row("G", Status.CONSUMED, ledger=False)
    with connection.cursor() as cursor:  # J: a business row alone
        cursor.execute(f"INSERT INTO {LEDGER_TABLE} VALUES (%s, 0, 'writer-0', 2)", [ids["J"]])
    for name in "ACCDGI":  # B lost, C twice, D phantom
        effect(name)
    harness.ledgers["writer-0"].write_text(
        json.dumps({"outcome": "commit", "events": [[ids["A"], 1], [ids["H"], 2]]})
        + "\n"
        + json.dumps({"outcome": "rollback", "events": [[ids["D"], 3], [ids["I"], 4]]})
        + '\n{"outcome": "comm'  # a line cut by SIGKILL
    )

    class Record:
        def __init__(self, name: str, pk: int, offset: int):
            self.headers = [("event_id", ids[name].encode()), ("outbox_id", str(pk).encode())]
            self.key, self.partition, self.offset = b"k", 0, offset

    records = [Record("A", 1, 0), Record("D", 3, 1), Record("A", 1, 2), Record("B", 2, 3)]
    report = harness.verify(records)  # B (row 2) after D (row 3): one inversion
    harness.close()

    titles = [failure.split(":")[0] for failure in report.failures]
    assert titles == [
        "lost (committed events without effect)",
        "duplicate effects (event",
        "phantom effects (effects of events not committed)",
        "phantom records (rolled-back events in Kafka)",
        "stuck rows (pk",
        "dead rows (pk",
        "business rows without outbox row",
        "outbox rows without business row",
        "COMMIT returned, business row missing",
        "rolled back, yet in the database",
        "same-key order inversions (a record after a later row of its key)",
    ], report.failures
    assert report.lost == {ids["B"], ids["E"], ids["F"], ids["J"]}
    assert report.dup_effects == {ids["C"]: 2}
    assert report.phantom == {ids["D"], ids["G"]}
    assert report.phantom_records == {ids["D"]}
    assert (report.records, report.dup_records, report.order_inversions) == (4, 1, 1)
    assert "lost=4 dup_effects=1 phantom=2 phantom_records=1 stuck=1 dead=1" in report.line()
