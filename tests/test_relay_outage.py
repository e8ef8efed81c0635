"""The relay through a real broker outage: Kafka stops, then comes back.

The broker stopped here is the private one of ``kafka_broker_control`` (see
tests/kafka_fixtures.py), never the shared broker other tests are using.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import transaction

from django_outbox import publish_event
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import (
    BrokerControl,
    create_topic,
    delete_topic,
    unique_topic_name,
)

from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    assert_each_row_once_in,
    leaked_sockets_collected,
    run_in_thread,
    wait_for,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    # The relay's connection attempts to the stopped broker are refused.
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]


@pytest.fixture(autouse=True)
def _leaked_sockets() -> Iterator[None]:
    with leaked_sockets_collected():
        yield


@pytest.fixture
def outage_topic(
    request: pytest.FixtureRequest, kafka_broker_control: BrokerControl
) -> Iterator[str]:
    """A topic on the private broker, deleted afterwards."""
    topic = unique_topic_name(request.node.name)
    create_topic(kafka_broker_control.bootstrap, topic)
    yield topic
    kafka_broker_control.start()  # a test that failed mid-outage left it stopped
    delete_topic(kafka_broker_control.bootstrap, topic)


@pytest.fixture
def outage_settings(settings, kafka_broker_control, outage_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_broker_control.bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = outage_topic
    settings.OUTBOX_WAKE_RELAY = False  # the relay alone delivers here
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    settings.OUTBOX_RETRY_BACKOFF_BASE = 0.2
    settings.OUTBOX_RETRY_BACKOFF_MAX = 0.5
    return settings


def publish(count: int, wave: str) -> list[OutboxMessage]:
    with transaction.atomic():
        return [
            publish_event("outage.tested", {"wave": wave, "n": n}, key=f"k{n % 4}")
            for n in range(count)
        ]


def test_burst_while_the_broker_is_down_keeps_the_rows_then_delivers_each_once(
    outage_settings, kafka_broker_control, caplog
):
    publish(20, "one")
    kafka_broker_control.stop()

    relay = Relay(burst=True, batch_size=10)
    with caplog.at_level(logging.WARNING, logger="django_outbox"):
        relay.run()  # must not raise, must end

    assert (relay.delivered, relay.failed, relay.errors) == (0, 20, 0)
    rows = list(OutboxMessage.objects.order_by("id"))
    assert {row.status for row in rows} == {Status.PENDING}
    assert [row.retry_count for row in rows] == [0] * 20  # an outage spends no retries
    assert all(row.last_error and "unreachable" in row.last_error for row in rows)
    assert not OutboxMessage.objects.in_flight().exists()  # released, not leased
    assert f"broker {kafka_broker_control.bootstrap} unreachable" in caplog.text

    kafka_broker_control.start()
    wait_for(lambda: OutboxMessage.objects.due().count() == 20, 10, "the rows to be due")
    call_command("outbox_relay", "--burst", stdout=io.StringIO())

    assert OutboxMessage.objects.published().count() == 20
    assert_each_row_once_in(kafka_broker_control.bootstrap, outage_settings.OUTBOX_DEFAULT_TOPIC)


def test_a_running_relay_rides_out_the_outage(outage_settings, kafka_broker_control):
    relay = Relay(interval=0.1)
    thread = run_in_thread(relay)
    try:
        publish(10, "before")
        wait_for(
            lambda: OutboxMessage.objects.published().count() == 10, 30, "the first deliveries"
        )

        # The relay's producer is connected when the broker goes away.
        kafka_broker_control.stop()
        during = publish(10, "during")
        wait_for(
            lambda: OutboxMessage.objects.filter(last_error__isnull=False).count() == 10,
            30,
            "an attempt on each row written during the outage",
        )
        assert thread.is_alive()
        statuses = OutboxMessage.objects.filter(pk__in=[row.pk for row in during])
        assert set(statuses.values_list("status", flat=True)) == {Status.PENDING}
        assert set(statuses.values_list("retry_count", flat=True)) == {0}

        kafka_broker_control.start()
        wait_for(
            lambda: OutboxMessage.objects.published().count() == 20,
            60,
            "the relay to deliver once the broker is back",
        )
    finally:
        relay.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert relay.errors == 0
    assert_each_row_once_in(kafka_broker_control.bootstrap, outage_settings.OUTBOX_DEFAULT_TOPIC)
