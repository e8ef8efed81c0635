from __future__ import annotations

import datetime
import json
import uuid

import pytest
from django.db import transaction

from django_outbox import Event, publish_event
from django_outbox.exceptions import ImproperlyConfiguredOutbox, InvalidEvent, OutboxError
from django_outbox.models import OutboxMessage, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def deliveries(monkeypatch):
    """The relay wake-ups the commits asked for (the relay's part is not under test)."""
    calls: list[str] = []
    monkeypatch.setattr("django_outbox.wakeup.wake_local", lambda: calls.append("woken"))
    return calls


def woken() -> list[str]:
    """The in-process wake-ups one committed transaction makes: one, except on
    PostgreSQL, where the NOTIFY sent with the row wakes every relay (tests/test_wakeup.py)."""
    from django.db import connection

    return [] if connection.vendor == "postgresql" else ["woken"]


def test_writes_a_pending_row_with_the_envelope(deliveries):
    with transaction.atomic():
        row = publish_event("chat.message.created", {"text": "hi"}, key="conversation-1")
    row = OutboxMessage.objects.get(pk=row.pk)
    assert row.status == Status.PENDING
    assert row.event_type == "chat.message.created"
    assert row.message_key == "conversation-1"
    assert row.topic == "chat.messages"  # from OUTBOX_TOPICS
    assert (row.retry_count, row.max_retry) == (0, 20)
    assert row.next_retry_at is None and row.published_at is None and row.last_error is None
    assert row.created_at is not None and row.updated_at is not None
    event = row.event
    assert isinstance(event, Event)
    assert (event.event_type, event.key, event.data, event.version) == (
        "chat.message.created",
        "conversation-1",
        {"text": "hi"},
        1,
    )


def test_key_defaults_to_the_event_id_and_topic_to_the_default(deliveries):
    row = publish_event("invoice.sent", [1, 2])
    assert row.message_key == str(row.event.event_id)
    assert uuid.UUID(row.message_key)
    assert row.topic == "outbox.test"


def test_explicit_topic_headers_version_and_max_retry(deliveries):
    row = publish_event(
        "invoice.sent", None, topic="billing.v2", headers={"trace": "t1"}, version=2, max_retry=3
    )
    assert (row.topic, row.max_retry) == ("billing.v2", 3)
    assert row.event.headers == {"trace": "t1"}
    assert row.event.version == 2
    assert row.event.data is None


def test_max_retry_default_follows_the_setting(settings, deliveries):
    settings.OUTBOX_MAX_RETRY = 7
    assert publish_event("a.b", {}).max_retry == 7


def test_django_types_are_serialised(deliveries):
    row = publish_event(
        "a.b",
        {
            "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
            "id": uuid.UUID(int=5),
        },
    )
    assert json.loads(row.payload)["data"] == {
        "when": "2026-01-01T00:00:00Z",
        "id": "00000000-0000-0000-0000-000000000005",
    }


def test_unicode_and_large_payloads_are_stored_whole(deliveries):
    text = "héllo 你好 🎉" + "x" * 2_000_000
    row = publish_event("a.b", {"text": text})
    assert OutboxMessage.objects.get(pk=row.pk).event.data["text"] == text


class Unserialisable:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"event_type": ""}, InvalidEvent, "event_type must be a non-empty string"),
        ({"event_type": "   "}, InvalidEvent, "event_type must be a non-empty string"),
        ({"event_type": None}, InvalidEvent, "event_type must be a non-empty string"),
        (
            {"event_type": "x" * 65},
            InvalidEvent,
            "65 characters; the biz_type column holds at most 64",
        ),
        ({"key": "k" * 129}, InvalidEvent, "129 characters; message_key holds at most 128"),
        ({"key": ""}, InvalidEvent, "key must be a non-empty string"),
        ({"key": 42}, InvalidEvent, "key must be a non-empty string"),
        ({"topic": "t" * 129}, InvalidEvent, "at most 128 fit"),
        ({"topic": "has space"}, InvalidEvent, "may contain only"),
        ({"topic": ""}, InvalidEvent, "non-empty string"),
        ({"data": {"x": Unserialisable()}}, InvalidEvent, "cannot be serialised to JSON"),
        ({"data": {"x": float("nan")}}, InvalidEvent, "cannot be serialised to JSON"),
        ({"data": {1, 2}}, InvalidEvent, "cannot be serialised to JSON"),
        ({"headers": {"a": 1}}, InvalidEvent, "headers must map strings to strings"),
        ({"headers": {"outbox_id": "1"}}, InvalidEvent, "reserved"),
        ({"max_retry": -1}, InvalidEvent, "max_retry"),
        ({"max_retry": "3"}, InvalidEvent, "max_retry"),
        ({"version": 0}, InvalidEvent, "version"),
        (
            {"using": "nowhere"},
            ImproperlyConfiguredOutbox,
            "'nowhere' is not in settings.DATABASES",
        ),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(kwargs, error, message, deliveries):
    arguments = {"event_type": "a.b", "data": {"ok": True}} | kwargs
    with pytest.raises(error, match=message) as info:
        publish_event(arguments.pop("event_type"), arguments.pop("data"), **arguments)
    assert isinstance(info.value, OutboxError)
    assert OutboxMessage.objects.count() == 0
    assert deliveries == []


def test_circular_data_is_refused(deliveries):
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(InvalidEvent, match="cannot be serialised"):
        publish_event("a.b", loop)
    assert not OutboxMessage.objects.exists()


def test_no_topic_anywhere_is_a_configuration_error(settings, deliveries):
    settings.OUTBOX_DEFAULT_TOPIC = None
    with pytest.raises(ImproperlyConfiguredOutbox, match="no topic for event type 'a.b'"):
        publish_event("a.b", {})
    assert not OutboxMessage.objects.exists()
    assert publish_event("chat.message.created", {}).topic == "chat.messages"


def test_rolled_back_transaction_leaves_no_row(deliveries):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_event("a.b", {})
        raise RuntimeError("business failure")
    assert not OutboxMessage.objects.exists()


def test_rolled_back_savepoint_drops_only_its_rows(django_capture_on_commit_callbacks, deliveries):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        kept = publish_event("a.b", {"n": 1})
        with pytest.raises(RuntimeError), transaction.atomic():
            publish_event("a.b", {"n": 2})
            raise RuntimeError
        also_kept = publish_event("a.b", {"n": 3})
    assert list(OutboxMessage.objects.values_list("pk", flat=True).order_by("pk")) == [
        kept.pk,
        also_kept.pk,
    ]
    # one callback for the transaction, registered again after the savepoint's rollback
    assert deliveries == woken()


def test_one_on_commit_callback_per_transaction(django_capture_on_commit_callbacks, deliveries):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        for n in range(5):
            publish_event("a.b", {"n": n})
    assert len(callbacks) == len(woken())
    assert deliveries == woken()


def test_a_callback_discarded_with_its_savepoint_is_registered_again(
    django_capture_on_commit_callbacks, deliveries
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            publish_event("a.b", {"n": 1})
            raise RuntimeError
        publish_event("a.b", {"n": 2})
    assert len(callbacks) == len(woken())
    assert deliveries == woken()


def test_wake_relay_off_registers_nothing(settings, django_capture_on_commit_callbacks, deliveries):
    settings.OUTBOX_WAKE_RELAY = False
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        publish_event("a.b", {})
    assert callbacks == []
    assert deliveries == []


def test_an_alias_no_relay_serves_is_refused(settings, deliveries):
    settings.OUTBOX_DATABASES = ["default"]
    with pytest.raises(ImproperlyConfiguredOutbox, match="no relay serves database 'other'"):
        publish_event("a.b", {}, using="other")
    assert deliveries == []


@pytest.mark.django_db(databases=["default", "other"])
def test_publish_on_another_database_follows_its_transaction(
    settings, django_capture_on_commit_callbacks, deliveries
):
    settings.OUTBOX_DATABASES = ["default", "other"]
    with django_capture_on_commit_callbacks(using="other", execute=True):
        with transaction.atomic(using="other"):
            row = publish_event("a.b", {"where": "other"}, using="other")
    assert OutboxMessage.objects.using("other").filter(pk=row.pk).exists()
    assert not OutboxMessage.objects.using("default").exists()
    assert deliveries == woken()

    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        publish_event("a.b", {"n": 2}, using="other")
        raise RuntimeError
    assert OutboxMessage.objects.using("other").count() == 1
    assert not OutboxMessage.objects.using("default").exists()


@pytest.mark.django_db(databases=["default", "other"])
def test_outbox_database_setting_is_the_default_alias(settings, deliveries):
    settings.OUTBOX_DATABASE = "other"  # served: OUTBOX_DATABASES defaults to [OUTBOX_DATABASE]
    row = publish_event("a.b", {})
    assert OutboxMessage.objects.using("other").filter(pk=row.pk).exists()
    assert not OutboxMessage.objects.using("default").exists()


@pytest.mark.django_db(transaction=True)
def test_callback_runs_after_a_real_commit_only(deliveries):
    with transaction.atomic():
        publish_event("a.b", {})
        assert deliveries == []
    assert deliveries == woken()
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_event("a.b", {})
        raise RuntimeError
    assert deliveries == woken()
