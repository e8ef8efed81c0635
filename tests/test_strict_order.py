"""OUTBOX_STRICT_ORDER: a row waits while an earlier row of its key is pending or dead."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from django_outbox.envelope import HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.claiming import claim
from django_outbox.models.ordering import ReleasedRow, release_keys
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .relay_support import FAST_FAIL_PRODUCER, IGNORE_LEAKED_SOCKETS, make_rows

pytestmark = pytest.mark.django_db(transaction=True)


def backing_off(row: OutboxMessage) -> None:
    later = timezone.now() + datetime.timedelta(minutes=5, milliseconds=3)
    OutboxMessage.objects.filter(pk=row.pk).update(retry_count=1, next_retry_at=later)


def claimed_ids(**options) -> list[int]:
    return [row.id for row in claim("default", 100, 30, **options).rows]


def test_off_by_default_a_failed_row_does_not_hold_its_key():
    a1, a2, b1 = make_rows(3, "t", keys=["a", "a", "b"])
    backing_off(a1)
    assert claimed_ids() == [a2.pk, b1.pk]


def test_on_a_row_waits_behind_an_earlier_open_row_of_its_key(settings):
    settings.OUTBOX_STRICT_ORDER = True
    a1, a2, b1, b2 = make_rows(4, "t", keys=["a", "a", "b", "b"])
    backing_off(a1)
    # a2 waits behind a1 (backing off); of b, only the first row goes per claim.
    assert claimed_ids() == [b1.pk]
    OutboxMessage.objects.filter(pk=b1.pk).update(status=Status.PUBLISHED)
    assert claimed_ids() == [b2.pk]
    OutboxMessage.objects.filter(pk=a1.pk).update(status=Status.CONSUMED)
    assert claimed_ids() == [a2.pk]


def test_the_same_key_on_another_topic_is_another_key(settings):
    settings.OUTBOX_STRICT_ORDER = True
    (first,) = make_rows(1, "t1", keys=["a"])
    (second,) = make_rows(1, "t2", keys=["a"])
    assert claimed_ids() == [first.pk, second.pk]


def test_a_dead_row_holds_its_key_until_released_or_retried(settings):
    settings.OUTBOX_STRICT_ORDER = True
    a1, a2, a3 = make_rows(3, "t", keys=["a"])
    OutboxMessage.objects.filter(pk=a1.pk).update(status=Status.DEAD)
    assert claimed_ids() == []
    assert release_keys(OutboxMessage.objects.filter(pk=a1.pk), "default", "ops") == 1
    assert release_keys(OutboxMessage.objects.filter(pk=a1.pk), "default") == 0  # once
    assert ReleasedRow.objects.get().released_by == "ops"
    assert claimed_ids() == [a2.pk]
    # Retrying the dead row instead: it goes first again.
    OutboxMessage.objects.filter(pk=a2.pk).update(status=Status.DEAD, next_retry_at=None)
    assert OutboxMessage.objects.filter(pk=a2.pk).retry_now(timezone.now()) == 1
    OutboxMessage.objects.filter(pk=a2.pk).update(next_retry_at=None)
    assert claimed_ids() == [a2.pk]
    assert a3.pk not in claimed_ids()


def test_only_the_listed_event_types(settings):
    settings.OUTBOX_STRICT_ORDER = ["other.type"]
    a1, a2 = make_rows(2, "t", keys=["a"])  # test.happened: not listed
    backing_off(a1)
    assert claimed_ids() == [a2.pk]


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_relay_in_strict_order_keeps_a_key_behind_its_dead_row(
    settings, kafka_bootstrap, kafka_topic
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_KAFKA_PRODUCER = {**FAST_FAIL_PRODUCER, "max_request_size": 50_000}
    settings.OUTBOX_STRICT_ORDER = True
    (poison,) = make_rows(1, kafka_topic, keys=["k"], size=60_000)  # too large: dead
    held = make_rows(3, kafka_topic, keys=["k"])
    free = make_rows(3, kafka_topic, keys=["j"])
    Relay(burst=True).run()
    poison.refresh_from_db()
    assert poison.status == Status.DEAD
    assert set(OutboxMessage.objects.published().values_list("pk", flat=True)) == {
        r.pk for r in free
    }
    assert OutboxMessage.objects.pending().count() == 3

    release_keys(OutboxMessage.objects.filter(pk=poison.pk), "default")
    Relay(burst=True).run()
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=6)
    order = [
        int(dict(r.headers)[HEADER_OUTBOX_ID])
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
        if r.key == b"k"
    ]
    assert order == [r.pk for r in held]


def test_admin_releases_a_key_and_lists_the_rows_it_held(settings, admin_client):
    settings.OUTBOX_STRICT_ORDER = True
    a1, a2 = make_rows(2, "t", keys=["a"])
    OutboxMessage.objects.filter(pk=a1.pk).update(status=Status.DEAD)
    url = "/admin/django_outbox/outboxmessage/"
    held = admin_client.get(url, {"held": "yes"})
    assert held.status_code == 200
    assert list(held.context["cl"].result_list) == [a2]
    response = admin_client.post(
        url, {"action": "release_key", "_selected_action": [a1.pk, a2.pk]}, follow=True
    )
    assert "1 dead message no longer holds its key." in response.content.decode()
    assert claimed_ids() == [a2.pk]
