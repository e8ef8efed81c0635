"""The real ``manage.py outbox_relay`` in a subprocess: SIGTERM, a second signal, SIGKILL.

The subprocess works on the test database (on SQLite, its file; see tests/settings.py).
"""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
from django.utils import timezone

from django_outbox.models import OutboxMessage
from django_outbox.models.buckets import RelayBucket
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic, topic_record_count

from .relay_support import (
    closed_port,
    event_ids,
    make_rows,
    read_until,
    relay_process,
    row_event_ids,
    silent_port,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def finish(process, timeout: float = 30) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except Exception:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"relay did not exit in {timeout}s:\n{output}") from None
    return process.returncode, output


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(relay_settings, kafka_bootstrap):
    make_rows(3000, relay_settings.OUTBOX_DEFAULT_TOPIC, size=200)
    process = relay_process("--batch-size", "1000", "--interval", "0.1", bootstrap=kafka_bootstrap)
    try:
        wait_for(
            lambda: (
                OutboxMessage.objects.in_flight().exists()
                or OutboxMessage.objects.published().exists()
            ),
            60,
            "the relay to claim a batch",
        )
        process.send_signal(signal.SIGTERM)
        code, output = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code == 0, output
    assert "SIGTERM received" in output
    assert "outbox relay stopped" in output
    # The claimed batch was sent and recorded, not abandoned to its lease.
    assert not OutboxMessage.objects.in_flight().exists(), output
    assert OutboxMessage.objects.published().count() % 1000 == 0


def test_a_second_signal_exits_at_once(relay_settings, kafka_bootstrap):
    make_rows(1, relay_settings.OUTBOX_DEFAULT_TOPIC)
    # The relay hangs building a producer for a broker that accepts connections and
    # never answers (60 s bootstrap timeout).
    producer = {"bootstrap_timeout_ms": 60_000}
    with silent_port() as port:
        process = relay_process(
            bootstrap=f"127.0.0.1:{port}",
            env={"OUTBOX_TEST_PRODUCER": json.dumps(producer)},
        )
        _second_signal(process)


def _second_signal(process) -> None:
    try:
        wait_for(lambda: OutboxMessage.objects.in_flight().exists(), 60, "a claim")
        process.send_signal(signal.SIGTERM)
        first = read_until(process, "send it again", 30)
        assert process.poll() is None  # still busy with the batch in hand
        process.send_signal(signal.SIGTERM)
        code, output = finish(process, timeout=15)
        output = first + output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code == 128 + signal.SIGTERM, output
    assert "exiting at once" in output


def test_sigterm_while_the_broker_is_down_exits_0_within_seconds(relay_settings):
    make_rows(5, relay_settings.OUTBOX_DEFAULT_TOPIC)
    process = relay_process("--interval", "0.1", bootstrap=f"127.0.0.1:{closed_port()}")
    try:
        read_until(process, "unreachable", 30)
        process.send_signal(signal.SIGTERM)
        code, output = finish(process, timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code == 0, output
    assert [r.retry_count for r in OutboxMessage.objects.all()] == [0] * 5


def test_sigkill_mid_batch_loses_nothing(relay_settings, kafka_bootstrap):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(2000, topic, size=200)
    process = relay_process(
        "--batch-size",
        "100",
        "--lease",
        "2",
        bootstrap=kafka_bootstrap,
    )
    try:
        wait_for(lambda: OutboxMessage.objects.published().count() >= 300, 60, "some deliveries")
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    in_flight = row_event_ids(OutboxMessage.objects.in_flight(timezone.now()))
    assert OutboxMessage.objects.pending().exists()

    # The killed relay's leases (its rows' and its buckets') run out; a new relay takes
    # its rows again.
    wait_for(
        lambda: (
            not OutboxMessage.objects.in_flight().exists()
            and not RelayBucket.objects.filter(lease_until__gt=timezone.now()).exists()
        ),
        10,
        "the leases to expire",
    )
    Relay(burst=True).run()

    assert OutboxMessage.objects.published().count() == 2000
    total = topic_record_count(kafka_bootstrap, topic)
    assert 2000 <= total <= 2000 + len(in_flight)
    records = read_topic(kafka_bootstrap, topic, expected_count=total)
    seen = Counter(event_ids(records))
    assert set(seen) == row_event_ids(OutboxMessage.objects.all())  # nothing lost
    duplicates = {event_id for event_id, count in seen.items() if count > 1}
    assert duplicates <= in_flight  # only rows in flight at the kill may appear twice
