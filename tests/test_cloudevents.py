"""The CloudEvents Kafka binding, binary mode (OUTBOX_CLOUDEVENTS), read back with the SDK."""

from __future__ import annotations

import datetime
import json

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from django.core.checks import run_checks
from django.db import transaction

from django_outbox import cloudevents, kafka, publish_event
from django_outbox.consumer import Outcome
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic

from .consumer_support import consume, registered, unique_group
from .relay_support import IGNORE_LEAKED_SOCKETS

EVENT = "billing.invoice.paid"
CE_HEADERS = {"ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type"}
#: What the Go service writes: encoding/json of a struct (keys sorted), nanoseconds, an offset.
GO_PAYLOAD = (
    '{"data":{"amount":7},"event_id":"3F1C2B9E-8D7A-4C6B-9E5F-1A2B3C4D5E6F",'
    '"event_type":"billing.invoice.paid","headers":{},"key":"inv-9",'
    '"occurred_at":"2026-11-27T20:00:00.123456789+01:00","version":1}'
)


def as_cloudevent(record):
    """A relayed Kafka record as the CloudEvents SDK reads it."""
    message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    return from_binary(message, JSONFormat())


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_relayed_records_are_cloudevents_the_sdk_reads(relay_settings, kafka_bootstrap):
    relay_settings.OUTBOX_CLOUDEVENTS = True
    relay_settings.OUTBOX_CLOUDEVENTS_SOURCE = "/billing"
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    with transaction.atomic():
        row = publish_event(EVENT, {"amount": 42}, key="inv-1", headers={"ce_subject": "inv-1"})
    go_row = OutboxMessage.objects.create(
        event_type=EVENT,
        topic=topic,
        message_key="inv-9",
        payload=GO_PAYLOAD,
        status=Status.PENDING,
        max_retry=3,
    )
    Relay(burst=True).run()
    records = read_topic(kafka_bootstrap, topic, expected_count=2)
    by_outbox_id = {int(dict(r.headers)["outbox_id"]): r for r in records}
    assert set(by_outbox_id) == {row.pk, go_row.pk}

    ours = as_cloudevent(by_outbox_id[row.pk])
    event = row.event
    assert ours.get_id() == str(event.event_id)
    assert ours.get_type() == EVENT
    assert ours.get_source() == "/billing"
    assert ours.get_specversion() == "1.0"
    assert ours.get_time() == event.occurred_at
    assert ours.get_datacontenttype() == "application/json"
    assert ours.get_subject() == "inv-1"  # a ce_ header of the publisher's: an attribute
    assert ours.get_data() == json.loads(row.payload)  # the value is the envelope, unchanged
    assert by_outbox_id[row.pk].value == row.payload.encode()

    theirs = as_cloudevent(by_outbox_id[go_row.pk])
    assert theirs.get_id() == "3f1c2b9e-8d7a-4c6b-9e5f-1a2b3c4d5e6f"
    assert theirs.get_time() == datetime.datetime(
        2026, 11, 27, 19, 0, 0, 123456, tzinfo=datetime.timezone.utc
    )
    assert theirs.get_data()["data"] == {"amount": 7}

    # And this app's consumer handles them as it always did.
    handled = []
    with registered(EVENT, handled.append):
        consumer = consume(topic, unique_group())
    assert consumer.stats.count(Outcome.HANDLED) == 2
    assert sorted(e.key for e in handled) == ["inv-1", "inv-9"]
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.CONSUMED}


def payload(**changes) -> str:
    document = {
        "event_id": "7d0c1d0e-4a4b-4a56-9a4e-2b1f0e6c2f61",
        "event_type": EVENT,
        "version": 1,
        "occurred_at": "2026-11-27T19:00:00.123456Z",
        "key": "k",
        "headers": {},
        "data": {},
    }
    document.update(changes)
    return json.dumps(document, separators=(",", ":"))


def test_off_by_default_no_cloudevents_headers():
    names = {name for name, _ in kafka.outbox_headers(1, EVENT, payload(), "default")}
    assert names == {"event_id", "event_type", "outbox_id", "outbox_db"}


def test_on_the_headers_follow_the_setting_at_once(settings):
    settings.OUTBOX_CLOUDEVENTS = True
    headers = dict(kafka.outbox_headers(1, EVENT, payload(), "reports"))
    assert CE_HEADERS <= set(headers)
    assert headers["ce_source"] == b"/django-outbox/reports"  # the default: the database
    assert headers["ce_time"] == b"2026-11-27T19:00:00.123456Z"
    settings.OUTBOX_CLOUDEVENTS = False
    assert not CE_HEADERS & {name for name, _ in kafka.outbox_headers(1, EVENT, payload(), "x")}


def test_our_attributes_win_over_envelope_headers_of_the_same_name(settings):
    settings.OUTBOX_CLOUDEVENTS = True
    envelope_headers = {"ce_id": "mine", "Content-Type": "text/plain", "ce_subject": "s"}
    headers = kafka.outbox_headers(1, EVENT, payload(headers=envelope_headers), "default")
    assert [value for name, value in headers if name.lower() == "ce_id"] == [
        b"7d0c1d0e-4a4b-4a56-9a4e-2b1f0e6c2f61"
    ]
    assert [value for name, value in headers if name.lower() == "content-type"] == [
        b"application/json"
    ]
    assert ("ce_subject", b"s") in headers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-27T19:00:00.123456Z", "2026-11-27T19:00:00.123456Z"),
        ("2026-11-27T20:00:00.123456789+01:00", "2026-11-27T20:00:00.123456789+01:00"),
        ("2026-11-27T19:00:00Z", "2026-11-27T19:00:00Z"),
        ("2026-11-27 20:00:00+01:00", "2026-11-27T19:00:00.000000Z"),  # ISO, not RFC 3339
        ("2026-11-27T19:00:00", None),  # no zone: no time
        ("yesterday", None),
        ("", None),
    ],
)
def test_ce_time_is_rfc3339_or_absent(text, expected):
    assert cloudevents.rfc3339(text) == expected


def test_a_payload_that_is_no_envelope_gets_no_cloudevents_headers(settings):
    settings.OUTBOX_CLOUDEVENTS = True
    names = {name for name, _ in kafka.outbox_headers(1, EVENT, "not json", "default")}
    assert not names & CE_HEADERS
    # An envelope with a time that is none: the event still is one, without ce_time.
    names = {name for name, _ in kafka.outbox_headers(1, EVENT, payload(occurred_at=5), "d")}
    assert names & CE_HEADERS == CE_HEADERS - {"ce_time"}


# --------------------------------------------------------------------------- checks


def outbox_ids() -> set[str]:
    return {m.id for m in run_checks(tags=["django_outbox"]) if m.id}


@pytest.mark.parametrize(
    "values, check_id",
    [
        ({"OUTBOX_CLOUDEVENTS": "yes"}, "django_outbox.E031"),
        ({"OUTBOX_CLOUDEVENTS": 1}, "django_outbox.E031"),
        ({"OUTBOX_CLOUDEVENTS": True, "OUTBOX_CLOUDEVENTS_SOURCE": ""}, "django_outbox.E030"),
        ({"OUTBOX_CLOUDEVENTS": True, "OUTBOX_CLOUDEVENTS_SOURCE": 5}, "django_outbox.E030"),
        ({"OUTBOX_CLOUDEVENTS": True, "OUTBOX_CLOUDEVENTS_SOURCE": "my app"}, "django_outbox.E030"),
        ({"OUTBOX_CLOUDEVENTS": True, "OUTBOX_CLOUDEVENTS_SOURCE": "/é"}, "django_outbox.E030"),
        ({"OUTBOX_CLOUDEVENTS": True, "OUTBOX_CLOUDEVENTS_SOURCE": "/a%zz"}, "django_outbox.E030"),
        ({"OUTBOX_CLOUDEVENTS_SOURCE": "/billing"}, "django_outbox.W030"),
    ],
)
def test_bad_cloudevents_settings_are_reported(settings, values, check_id):
    for name, value in values.items():
        setattr(settings, name, value)
    assert outbox_ids() == {check_id}


@pytest.mark.parametrize(
    "source", [None, "/billing", "urn:example:billing", "https://example.com/a?b=c#d", "/%C3%A9"]
)
def test_good_cloudevents_settings_pass(settings, source):
    settings.OUTBOX_CLOUDEVENTS = True
    settings.OUTBOX_CLOUDEVENTS_SOURCE = source
    assert outbox_ids() == set()
