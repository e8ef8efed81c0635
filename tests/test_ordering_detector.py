"""The consumer's ordering detector: a key's record handled after a later one is counted."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from django_outbox.consumer import Outcome
from django_outbox.consumer.ordering_detector import OrderingDetector
from django_outbox.consumer.records import Delivery
from django_outbox.envelope import Event
from django_outbox.kafka import outbox_headers
from django_outbox.ops import metrics

from .consumer_support import consume, registered, send_raw, unique_group

ORDERED = "test.ordered"


def outbox_record(
    outbox_id: int, key: str = "k", alias: str = "elsewhere", event: Event | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A record as a relay of database ``alias`` sends row ``outbox_id``."""
    event = event or Event(event_type=ORDERED, data={"id": outbox_id}, key=key)
    payload = event.to_json()
    return key.encode(), payload.encode(), outbox_headers(outbox_id, ORDERED, payload, alias)


def delivery(outbox_id: int, offset: int, key: str = "k", partition: int = 0) -> Delivery:
    key_bytes, value, headers = outbox_record(outbox_id, key)
    return Delivery("t", partition, offset, key_bytes, value, tuple(headers))


def test_a_lower_id_after_a_higher_one_is_a_violation(caplog):
    detector = OrderingDetector(10)
    with caplog.at_level(logging.WARNING, "django_outbox.consumer"):
        assert not detector.check(delivery(1, 0))
        assert not detector.check(delivery(3, 1))
        assert detector.check(delivery(2, 2))
    assert detector.violations == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "outbox consumer: ordering violation on t[0]: key b'k', outbox id 2 (elsewhere) "
        "handled after id 3"
    )
    # The highest id stays the mark: 2 again is still out of order, 4 is not.
    assert detector.check(delivery(2, 3))
    assert not detector.check(delivery(4, 4))


def test_what_is_not_a_violation():
    detector = OrderingDetector(10)
    assert not detector.check(delivery(5, 0))
    assert not detector.check(delivery(5, 1))  # the same id delivered again
    assert not detector.check(delivery(1, 0))  # an offset read again (rewind, rebalance)
    assert not detector.check(delivery(2, 2, key="other"))  # another key
    assert not detector.check(delivery(1, 1, partition=1))  # another partition
    assert not detector.check(delivery(1, 3), Outcome.DUPLICATE)  # handled before, in place
    assert not detector.check(Delivery("t", 0, 4, b"k", b"{}", ()))  # no outbox headers
    assert not detector.check(Delivery("t", 0, 5, None, b"{}", delivery(1, 5).headers))  # no key
    assert detector.violations == 0


def test_the_memory_is_bounded_per_partition():
    detector = OrderingDetector(3)
    for index in range(10):
        detector.check(delivery(100 + index, index, key=f"key-{index}"))
        detector.check(delivery(100 + index, index, key=f"key-{index}", partition=1))
    assert detector.remembered() == 6  # 3 keys per partition
    # key-0 was forgotten (least recently seen): an earlier id of it goes unnoticed...
    assert not detector.check(delivery(1, 20, key="key-0"))
    # ...while a key still remembered is caught.
    assert detector.check(delivery(1, 21, key="key-9"))
    # Seeing a key again keeps it: key-8 is touched, then two new keys push out others.
    detector.check(delivery(200, 22, key="key-8"))
    detector.check(delivery(300, 23, key="new-1"))
    detector.check(delivery(301, 24, key="new-2"))
    assert detector.check(delivery(2, 25, key="key-8"))
    assert detector.remembered() == 6


def test_zero_keys_turns_it_off():
    detector = OrderingDetector(0)
    detector.check(delivery(3, 0))
    assert not detector.check(delivery(2, 1))
    assert detector.remembered() == 0


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_records_out_of_order_through_the_broker(settings, kafka_bootstrap, kafka_topic, caplog):
    settings.OUTBOX_ORDERING_KEYS = 100
    first = Event(event_type=ORDERED, data={"id": 1}, key="a")
    records = [
        outbox_record(1, "a", event=first),
        outbox_record(3, "a"),
        outbox_record(2, "a"),  # after 3: a violation
        outbox_record(4, "b"),
        outbox_record(1, "a", event=first),  # redelivered: a duplicate, not a violation
        outbox_record(5, "a"),
    ]
    send_raw(kafka_bootstrap, kafka_topic, records, partition=1)
    handled: list[int] = []
    metrics.enable()
    before = REGISTRY.get_sample_value(
        "django_outbox_ordering_violations_total", {"topic": kafka_topic}
    )
    try:
        with (
            registered(ORDERED, lambda event: handled.append(event.data["id"])),
            caplog.at_level(logging.INFO, "django_outbox.consumer"),
        ):
            consumer = consume(kafka_topic, unique_group())
        counted = REGISTRY.get_sample_value(
            "django_outbox_ordering_violations_total", {"topic": kafka_topic}
        )
    finally:
        metrics.disable()
    assert handled == [1, 3, 2, 4, 5]
    assert consumer.stats.outcomes == {"handled": 5, "duplicate": 1}
    assert consumer.stats.ordering_violations == 1
    assert (counted or 0) - (before or 0) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"outbox consumer: ordering violation on {kafka_topic}[1]: key b'a', outbox id 2 "
        "(elsewhere) handled after id 3"
    ]
    assert warnings[0].offset == 2
    assert "1 ordering violation(s)" in caplog.text  # the final progress line
