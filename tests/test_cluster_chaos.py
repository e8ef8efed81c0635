"""The chaos test on the 3-node cluster: 3 relays, 3 consumers, a partition leader killed.

The harness of tests/test_chaos.py (tests/chaos_harness.py) with 3 ``outbox_relay`` and 3
``outbox_consume`` subprocesses (one group) on a topic of 6 partitions that
``outbox_topics --create`` makes with replication 3 and ``min.insync.replicas=2``, on the
``kafka_cluster`` fixture's cluster (tests/kafka_fixtures.py; KAFKA_CLUSTER_PORT). The
plan's Kafka outage is the SIGKILL of the node leading one partition (chosen by the seed),
restarted after OUTBOX_CHAOS_OUTAGE seconds (default 20); the plan also SIGKILLs relays
and consumers (at least one of each), SIGTERMs one of each, kills a writer inside its
transaction and terminates the database's backends (OUTBOX_CHAOS_DB_BLIPS).

Asserted, as on one broker: lost 0, duplicate effects 0, phantom effects and records 0,
stuck 0, dead 0, unexpected exits 0, every SIGTERM exit 0, same-key inversions 0
(OUTBOX_CHAOS_REQUIRE_ORDER=0: counted and printed only, see tests/test_chaos.py).
The verdict's line is printed last.

PostgreSQL only, where tests/test_cluster.py runs (CI's PostgreSQL run). The environment of
tests/test_chaos.py applies, except OUTBOX_CHAOS_KAFKA_PORT; OUTBOX_CHAOS_RATE defaults
to 10 events/s per writer here (three JVMs share the machine).

Run: DATABASE_URL=postgres://... .venv/bin/python -m pytest tests/test_cluster_chaos.py -s
"""

from __future__ import annotations

import io
import os

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from tests.chaos_fixtures import run_and_judge
from tests.chaos_harness import Chaos, LeaderKill
from tests.kafka_fixtures import delete_topic, unique_topic_name

ON_POSTGRESQL = django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
PARTITIONS = 6

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.skipif(
        not ON_POSTGRESQL,
        reason="the cluster chaos test runs on PostgreSQL only (DATABASE_URL=postgres://...): "
        "it terminates database backends, and needs the 3-node cluster, once per CI run",
    ),
]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_chaos_on_the_cluster(
    settings, monkeypatch, kafka_cluster, chaos_tables, interruptible, chaos_budget, capsys
):
    budget = chaos_budget
    topic = unique_topic_name(f"chaos-cluster-{budget.seed}")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_cluster.bootstrap
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEFAULT_TOPIC = topic
    out = io.StringIO()
    call_command(
        "outbox_topics", "--create", "--partitions", str(PARTITIONS),
        "--replication-factor", "3", "--min-insync-replicas", "2", stdout=out,
    )  # fmt: skip
    assert f"created {topic}" in out.getvalue()
    monkeypatch.setenv("OUTBOX_CHAOS_RATE", os.environ.get("OUTBOX_CHAOS_RATE") or "10")
    fault = LeaderKill(kafka_cluster, topic, partition=budget.seed % PARTITIONS)
    harness = Chaos(
        budget.seed, budget.log_dir, kafka_cluster.bootstrap, topic, fault, relays=3, consumers=3
    )
    try:
        run_and_judge(harness, budget, capsys)
    finally:
        delete_topic(kafka_cluster.bootstrap, topic)
