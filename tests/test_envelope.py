from __future__ import annotations

import datetime
import decimal
import json
import uuid

import pytest

from django_outbox.envelope import Event
from django_outbox.exceptions import MalformedEvent, OutboxError


def make_event(**overrides):
    values = {"event_type": "chat.message.created", "data": {"text": "hi"}, "key": "c-1"}
    values.update(overrides)
    return Event(**values)


def test_round_trip_keeps_every_field():
    event = make_event(headers={"trace_id": "t-1"}, version=3)
    parsed = Event.from_json(event.to_json())
    assert parsed == event
    assert isinstance(parsed.event_id, uuid.UUID)
    assert parsed.occurred_at.tzinfo == datetime.timezone.utc


def test_serialised_format_is_the_documented_one():
    event = make_event(
        event_id=uuid.UUID("7d0c1d0e-4a4b-4a56-9a4e-2b1f0e6c2f61"),
        occurred_at=datetime.datetime(2026, 11, 27, 19, 0, 0, 123456, tzinfo=datetime.timezone.utc),
    )
    assert json.loads(event.to_bytes()) == {
        "event_id": "7d0c1d0e-4a4b-4a56-9a4e-2b1f0e6c2f61",
        "event_type": "chat.message.created",
        "version": 1,
        "occurred_at": "2026-11-27T19:00:00.123456Z",
        "key": "c-1",
        "headers": {},
        "data": {"text": "hi"},
    }


def test_occurred_at_in_another_zone_is_written_in_utc():
    cet = datetime.timezone(datetime.timedelta(hours=1))
    event = make_event(occurred_at=datetime.datetime(2026, 1, 1, 1, 0, tzinfo=cet))
    assert event.as_dict()["occurred_at"] == "2026-01-01T00:00:00.000000Z"


def test_django_types_in_data_are_serialised():
    event = make_event(
        data={
            "at": datetime.date(2026, 1, 2),
            "amount": decimal.Decimal("1.10"),
            "id": uuid.UUID(int=1),
        }
    )
    assert Event.from_json(event.to_json()).data == {
        "at": "2026-01-02",
        "amount": "1.10",
        "id": "00000000-0000-0000-0000-000000000001",
    }


def test_unicode_survives_bytes():
    event = make_event(data={"text": "héllo 你好 🎉"})
    assert Event.from_json(event.to_bytes()).data["text"] == "héllo 你好 🎉"
    assert Event.from_json(memoryview(event.to_bytes())).data["text"] == "héllo 你好 🎉"


def test_unknown_fields_are_ignored():
    document = make_event().as_dict() | {"producer": "go-service"}
    assert Event.from_dict(document).event_type == "chat.message.created"


VALID = make_event().as_dict()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("null", "must be a JSON object"),
        (json.dumps({k: v for k, v in VALID.items() if k != "data"}), "lacks data"),
        (
            json.dumps({k: v for k, v in VALID.items() if k not in ("key", "event_id")}),
            "lacks event_id, key",
        ),
        (json.dumps(VALID | {"event_id": "nope"}), "not a UUID"),
        (json.dumps(VALID | {"event_type": ""}), "event_type"),
        (json.dumps(VALID | {"event_type": 5}), "event_type"),
        (json.dumps(VALID | {"version": "1"}), "version"),
        (json.dumps(VALID | {"version": True}), "version"),
        (json.dumps(VALID | {"version": 0}), "version"),
        (json.dumps(VALID | {"key": None}), "key"),
        (json.dumps(VALID | {"headers": {"a": 1}}), "headers"),
        (json.dumps(VALID | {"headers": []}), "headers"),
        (json.dumps(VALID | {"occurred_at": "yesterday"}), "occurred_at"),
        (json.dumps(VALID | {"occurred_at": "2026-01-01T00:00:00"}), "occurred_at"),
        (json.dumps(VALID | {"occurred_at": 12}), "occurred_at"),
    ],
)
def test_malformed_envelopes_raise_one_exception_type(raw, message):
    with pytest.raises(MalformedEvent, match=message) as info:
        Event.from_json(raw)
    assert isinstance(info.value, OutboxError)


def test_unserialisable_data_raises_type_error():
    with pytest.raises(TypeError):
        make_event(data={"x": object()}).to_json()
    with pytest.raises(ValueError):
        make_event(data={"x": float("nan")}).to_json()
