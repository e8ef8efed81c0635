"""``manage.py outbox_consume`` as a real process: SIGTERM, a second signal, SIGKILL."""

from __future__ import annotations

import signal

import pytest

from django_outbox import publish_event
from django_outbox.consumer import Outcome
from django_outbox.models import OutboxMessage, Status
from testproject.chat.models import Conversation

from .consumer_support import (
    COUNTER,
    committed_offsets,
    consume,
    consumer_process,
    count_handler,
    registered,
    send_rows,
    unique_group,
)
from .kafka_fixtures import create_topic, delete_topic, unique_topic_name
from .relay_support import read_until, wait_for

SLOW = "test.slow"

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_WAKE_RELAY = False


def count(conversation):
    conversation.refresh_from_db()
    return conversation.message_count


def test_sigterm_finishes_the_record_in_hand_commits_and_exits_0(
    kafka_bootstrap, kafka_topic, tmp_path
):
    conversation = Conversation.objects.create(title="sigterm")
    rows = [publish_event(SLOW, {"conversation_id": conversation.pk}) for _ in range(5)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    group = unique_group()
    process = consumer_process(
        kafka_bootstrap,
        "--topic", kafka_topic, "--group", group, "--poll-timeout", "0.2",
        env={"OUTBOX_TEST_MARKERS": str(tmp_path), "OUTBOX_TEST_SLOW": "1.0"},
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "started-2").exists(), 60, "the second record")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "SIGTERM received" in output
    assert "outbox consumer stopped: 2 records" in output
    assert count(conversation) == 2  # the record in hand was finished
    assert committed_offsets(kafka_topic, group)[0] == 2
    statuses = [OutboxMessage.objects.get(pk=row.pk).status for row in rows]
    assert statuses == [Status.CONSUMED] * 2 + [Status.PENDING] * 3

    # A restart picks up where it stopped: no record twice, none lost.
    with registered(SLOW, count_handler):
        rest = consume(kafka_topic, group)
    assert rest.stats.outcomes == {"handled": 3}
    assert count(conversation) == 5


def test_second_signal_exits_at_once(kafka_bootstrap, kafka_topic, tmp_path):
    conversation = Conversation.objects.create(title="impatient")
    row = publish_event(SLOW, {"conversation_id": conversation.pk})
    send_rows(kafka_bootstrap, kafka_topic, [row], partition=0)
    group = unique_group()
    process = consumer_process(
        kafka_bootstrap,
        "--topic", kafka_topic, "--group", group,
        env={"OUTBOX_TEST_MARKERS": str(tmp_path), "OUTBOX_TEST_SLOW": "120"},
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "started-1").exists(), 60, "the record to start")
        process.send_signal(signal.SIGTERM)
        first = read_until(process, "send it again", 30)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        output = first + output
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, output
    assert "exiting at once" in output
    assert count(conversation) == 0  # rolled back: the record is handled by the next consumer
    assert committed_offsets(kafka_topic, group)[0] is None
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.PENDING


def test_sigkill_after_handler_commit_before_offset_commit(kafka_bootstrap, kafka_topic):
    """One record per transaction (``--batch-size 1``): killed after the second commits."""
    conversation = Conversation.objects.create(title="killed")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(4)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    group = unique_group()
    process = consumer_process(
        kafka_bootstrap,
        "--topic", kafka_topic, "--group", group, "--burst", "--batch-size", "1",
        env={"OUTBOX_TEST_KILL_AT": "2"},
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, output
    assert count(conversation) == 2
    assert committed_offsets(kafka_topic, group)[0] is None  # died before the offset commit

    with registered(COUNTER, count_handler):
        restarted = consume(kafka_topic, group)
    assert restarted.stats.outcomes == {"duplicate": 2, "handled": 2}
    assert count(conversation) == 4
    assert OutboxMessage.objects.consumed().count() == 4


@pytest.mark.parametrize("moment", ["KILL_IN", "KILL_AT"], ids=["mid-chunk", "after-chunk-commit"])
def test_sigkill_during_a_chunk_gives_each_effect_once(kafka_bootstrap, kafka_topic, moment):
    """Killed inside the third handler of a chunk, or right after the chunk commits."""
    conversation = Conversation.objects.create(title="killed in a chunk")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(6)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    group = unique_group()
    process = consumer_process(
        kafka_bootstrap,
        "--topic", kafka_topic, "--group", group, "--burst",
        env={f"OUTBOX_TEST_{moment}": "3"},
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, output
    assert committed_offsets(kafka_topic, group)[0] is None
    survived = count(conversation)  # the committed chunks (a poll may bring fewer than 6)
    consumed = OutboxMessage.objects.consumed().count()
    assert survived == consumed  # the consumed mark commits with the handler's effects
    if moment == "KILL_IN":
        assert survived < 3  # the chunk in hand left nothing behind
    else:
        assert survived >= 3

    with registered(COUNTER, count_handler):
        restarted = consume(kafka_topic, group)
    assert restarted.stats.records == 6
    assert restarted.stats.count(Outcome.DUPLICATE) == survived
    assert restarted.stats.count(Outcome.HANDLED) == 6 - survived
    assert count(conversation) == 6
    assert OutboxMessage.objects.consumed().count() == 6


@pytest.mark.parametrize("state", ["starting", "cut-off"])
def test_sigterm_is_honoured_while_the_broker_is_away(kafka_broker_control, state):
    """Started with the broker down, or cut off once connected: SIGTERM exits 0 promptly."""
    topic = unique_topic_name(f"sigterm-{state}")
    create_topic(kafka_broker_control.bootstrap, topic, partitions=1)
    if state == "starting":
        kafka_broker_control.stop()
    process = consumer_process(
        kafka_broker_control.bootstrap,
        "--topic", topic, "--group", unique_group(), "--poll-timeout", "0.2",
    )  # fmt: skip
    try:
        if state == "cut-off":
            read_until(process, "outbox consumer starting", 60)
            kafka_broker_control.stop()
        seen = read_until(process, f"broker {kafka_broker_control.bootstrap} unreachable", 90)
        assert "unreachable" in seen
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        kafka_broker_control.start()
        delete_topic(kafka_broker_control.bootstrap, topic)
    assert process.returncode == 0, seen + output
    assert "SIGTERM received" in seen + output
