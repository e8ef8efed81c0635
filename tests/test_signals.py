"""django_outbox.signals: sent once an outcome is written; a failing receiver changes nothing."""

from __future__ import annotations

import pytest

from django_outbox import signals
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from django_outbox.relay.send import Sender

from .consumer_support import (
    COUNTER,
    consume,
    count_handler,
    foreign_record,
    registered,
    send_raw,
    unique_group,
)
from .relay_support import FAST_FAIL_PRODUCER, IGNORE_LEAKED_SOCKETS, closed_port, make_rows

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]


@pytest.fixture
def received():
    got: list[tuple[str, object, dict]] = []
    connected = []
    for name in (
        "event_published",
        "event_failed",
        "event_dead",
        "event_consumed",
        "record_rejected",
    ):
        signal = getattr(signals, name)

        def receiver(sender, signal=None, _name=name, **kwargs):
            got.append((_name, sender, kwargs))

        signal.connect(receiver, weak=False, dispatch_uid=f"test-{name}")
        connected.append((signal, name))
    yield got
    for signal, name in connected:
        signal.disconnect(dispatch_uid=f"test-{name}")


def test_the_relay_signals_each_batch_outcome_once(relay_settings, received):
    relay_settings.OUTBOX_KAFKA_PRODUCER = {**FAST_FAIL_PRODUCER, "max_request_size": 50_000}
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    good = make_rows(4, topic)
    (bad,) = make_rows(1, topic, size=60_000)  # too large: dead at once
    Relay(burst=True).run()
    published = [kw for name, sender, kw in received if name == "event_published"]
    dead = [kw for name, sender, kw in received if name == "event_dead"]
    assert {row.id for kw in published for row in kw["rows"]} == {r.pk for r in good}
    assert [[row.id for row in kw["rows"]] for kw in dead] == [[bad.pk]]
    assert "MessageSizeTooLarge" in dead[0]["errors"][0]
    assert all(sender is Sender for _, sender, _ in received)
    assert {kw["alias"] for _, _, kw in received} == {"default"}


def test_an_unreachable_broker_signals_failed_rows(relay_settings, received):
    relay_settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    rows = make_rows(2, relay_settings.OUTBOX_DEFAULT_TOPIC)
    Relay(burst=True).run()
    failed = [kw for name, _, kw in received if name == "event_failed"]
    assert {row.id for kw in failed for row in kw["rows"]} == {r.pk for r in rows}
    assert not [name for name, _, _ in received if name != "event_failed"]


def test_a_failing_receiver_changes_no_outcome(relay_settings, caplog):
    def explode(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.event_published.connect(explode, weak=False, dispatch_uid="explode")
    try:
        make_rows(3, relay_settings.OUTBOX_DEFAULT_TOPIC)
        Relay(burst=True).run()
    finally:
        signals.event_published.disconnect(dispatch_uid="explode")
    assert OutboxMessage.objects.filter(status=Status.PUBLISHED).count() == 3
    assert "a receiver of a django_outbox signal failed" in caplog.text


def test_the_consumer_signals_consumed_and_rejected_records(
    settings, kafka_bootstrap, kafka_topic, received
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    group = unique_group()
    with registered(COUNTER, count_handler):
        good = foreign_record(COUNTER, {"conversation_id": 0})
        send_raw(kafka_bootstrap, kafka_topic, [good, (b"k", b"not json", [])])
        consume(kafka_topic, group)
    outcomes = [(name, kw["group"], kw["record"].offset) for name, _, kw in received]
    assert sorted(outcomes) == [("event_consumed", group, 0), ("record_rejected", group, 1)]
    (rejected,) = [kw for name, _, kw in received if name == "record_rejected"]
    assert rejected["reason"] == "missing_headers"
    assert rejected["record"].timestamp > 0  # the Kafka timestamp, ms


def test_an_unknown_event_type_is_signalled_as_rejected(
    settings, kafka_bootstrap, kafka_topic, received
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    send_raw(kafka_bootstrap, kafka_topic, [foreign_record("test.nobody", {})])
    with registered(COUNTER, count_handler):
        consume(kafka_topic, unique_group())
    assert [(name, kw["reason"]) for name, _, kw in received] == [
        ("record_rejected", "unknown_event_type")
    ]
