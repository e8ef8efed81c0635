"""``manage.py outbox_topics`` and ``outbox_ready`` against the real broker."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from .kafka_fixtures import delete_topic, unique_topic_name
from .relay_support import IGNORE_LEAKED_SOCKETS, closed_port, leaked_sockets_collected

pytestmark = pytest.mark.kafka


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def table(out: str) -> dict[str, list[str]]:
    """The rows of the command's table: topic -> [partitions, replication] or ["missing"]."""
    lines = [line.split() for line in out.splitlines()]
    start = next(i for i, line in enumerate(lines) if line[:1] == ["topic"])
    return {line[0]: line[1:] for line in lines[start + 1 :]}


@pytest.fixture
def topics(settings, kafka_bootstrap):
    """Two topics the settings name, neither of which exists yet; deleted afterwards."""
    chat, default = unique_topic_name("topics-chat"), unique_topic_name("topics-default")
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_TOPICS = {"chat.message.created": chat, "chat.other": chat}
    settings.OUTBOX_DEFAULT_TOPIC = default
    yield chat, default
    delete_topic(kafka_bootstrap, chat)
    delete_topic(kafka_bootstrap, default)


def test_lists_missing_topics_without_creating_them(topics):
    chat, default = topics
    out, err = run("outbox_topics")
    assert table(out) == {chat: ["missing"], default: ["missing"]}
    assert f"topic {chat} does not exist" in err
    out, _ = run("outbox_topics")  # describing did not auto-create them
    assert table(out) == {chat: ["missing"], default: ["missing"]}


def test_create_the_missing_ones_with_partitions_and_replication(topics):
    chat, default = topics
    out, err = run("outbox_topics", "--create", "--partitions", "2", "--replication-factor", "1")
    assert out.startswith("created ")
    assert table(out) == {chat: ["2", "1"], default: ["2", "1"]}
    assert err == ""
    out, _ = run("outbox_topics", "--create", "--partitions", "5", "--replication-factor", "1")
    assert "created" not in out  # existing topics are left as they are
    assert table(out)[chat] == ["2", "1"]


def test_warns_when_consumers_outnumber_partitions(topics):
    chat, _ = topics
    run("outbox_topics", "--create", "--partitions", "2", "--replication-factor", "1")
    _, err = run("outbox_topics", "--consumers", "3")
    assert f"topic {chat} has 2 partition(s) for 3 consumers: 1 of them will sit idle" in err
    _, err = run("outbox_topics", "--consumers", "2")
    assert err == ""


def test_create_needs_both_numbers(topics):
    with pytest.raises(CommandError, match="--create needs --partitions N"):
        run("outbox_topics", "--create", "--partitions", "2")
    with pytest.raises(CommandError, match="--partitions: must be at least 1"):
        run("outbox_topics", "--partitions", "0")


def test_replication_checked_against_the_brokers(topics):
    chat, default = topics
    with pytest.raises(CommandError, match="--replication-factor 2 needs 2 brokers; the cluster"):
        run("outbox_topics", "--create", "--partitions", "1", "--replication-factor", "2")
    with pytest.raises(CommandError, match="--min-insync-replicas 2 exceeds --replication-fa"):
        run(
            "outbox_topics", "--create", "--partitions", "1",
            "--replication-factor", "1", "--min-insync-replicas", "2",
        )  # fmt: skip
    out, _ = run("outbox_topics")
    assert table(out) == {chat: ["missing"], default: ["missing"]}  # nothing was created
    out, err = run(
        "outbox_topics", "--create", "--partitions", "1",
        "--replication-factor", "1", "--min-insync-replicas", "1",
    )  # fmt: skip
    assert table(out) == {chat: ["1", "1"], default: ["1", "1"]}
    assert err == ""  # one copy on a single broker: nothing to warn about


def test_no_topic_configured(settings):
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEFAULT_TOPIC = None
    with pytest.raises(CommandError, match="no topic configured"):
        run("outbox_topics")


@pytest.mark.django_db(databases=["default", "other"])
def test_ready_when_database_and_broker_answer(settings, kafka_bootstrap):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DATABASES = ["default", "other"]
    out, _ = run("outbox_ready")
    assert "database 'default': ok" in out and "database 'other': ok" in out
    assert f"Kafka at {kafka_bootstrap}: ok (1 broker(s))" in out


@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
@pytest.mark.django_db
def test_not_ready_when_the_broker_is_down(settings):
    address = f"127.0.0.1:{closed_port()}"
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = address
    with leaked_sockets_collected():
        with pytest.raises(CommandError, match=f"Kafka at {address} does not answer"):
            run("outbox_ready", "--timeout", "1")
        with pytest.raises(CommandError, match=f"Kafka at {address} does not answer"):
            run("outbox_topics", "--timeout", "1")
    out, _ = run("outbox_ready", "--skip-broker")
    assert "database 'default': ok" in out


@pytest.mark.django_db
def test_not_ready_without_the_outbox_table(monkeypatch):
    from django_outbox.models import OutboxMessage

    monkeypatch.setattr(OutboxMessage._meta, "db_table", "agent_outbox_not_migrated")
    with pytest.raises(CommandError, match="database 'default' does not answer"):
        run("outbox_ready", "--skip-broker")
