"""``django_outbox.tasks.OutboxBackend``: Django tasks through the outbox (docs/tasks.rst).

Run with the ``django-tasks`` backport on Django 5.2 (tests/settings.py's ``TASKS``).
"""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.db import transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_outbox.envelope import Event
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.task_results import TaskRecord
from django_outbox.registry import registry
from django_outbox.relay.loop import Relay
from django_outbox.tasks import OutboxBackend
from django_outbox.tasks.framework import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task,
    task_backends,
)
from testproject.chat.models import Conversation

from . import task_functions
from .consumer_support import consume, unique_group
from .relay_support import FAST_FAIL_PRODUCER, IGNORE_LEAKED_SOCKETS, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quiet(settings):
    settings.OUTBOX_WAKE_RELAY = False


@pytest.fixture
def broker(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    return kafka_topic


def deliver(topic: str) -> None:
    """The relay sends what is due, a burst consumer (owning the rows) handles it."""
    Relay(burst=True).run()
    consume(topic, unique_group())


# ----------------------------------------------------------------------------- enqueue


def test_enqueue_writes_the_event_and_a_ready_result():
    result = task_functions.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.backend == "default"
    row = OutboxMessage.objects.get()
    assert row.event_type == "tests.task_functions.add" and row.status == Status.PENDING
    event = row.event
    assert str(event.event_id) == result.id
    assert event.data == {"args": [2, 3], "kwargs": {}}
    stored = task_functions.add.get_result(result.id)
    assert stored.status == TaskResultStatus.READY and stored.args == [2, 3]
    assert not stored.is_finished
    assert "tests.task_functions.add" in registry  # declaring the task registered its handler


def test_a_rollback_writes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        task_functions.add.enqueue(1, 2)
        raise RuntimeError("the business transaction failed")
    assert not OutboxMessage.objects.exists() and not TaskRecord.objects.exists()


@pytest.mark.parametrize(
    "args", [(object(), 1), (float("nan"), 1), (datetime.date(2026, 1, 1), 1)], ids=str
)
def test_arguments_that_are_not_json_write_nothing(args):
    with pytest.raises(InvalidTask, match="must be JSON values"):
        task_functions.add.enqueue(*args)
    assert not OutboxMessage.objects.exists() and not TaskRecord.objects.exists()


def test_a_name_too_long_for_biz_type_needs_an_event_type():
    func = task_functions.a_task_function_whose_name_is_far_too_long_for_the_biz_type_column
    with pytest.raises(InvalidTask, match="EVENT_TYPES"):
        task(func)
    options = {"EVENT_TYPES": {f"{func.__module__}.{func.__qualname__}": "tests.long"}}
    tasks = {"default": {"BACKEND": "django_outbox.tasks.OutboxBackend", "OPTIONS": options}}
    try:
        with override_settings(TASKS=tasks):
            declared = task(func)
            declared.enqueue()
            assert OutboxMessage.objects.get().event_type == "tests.long"
            assert "tests.long" in registry
    finally:
        registry.unregister("tests.long")


def test_priority_is_not_supported():
    with pytest.raises(InvalidTask):
        task_functions.add.using(priority=5)


def test_run_after_must_be_aware():
    with pytest.raises(InvalidTask, match="aware"):
        task_functions.add.using(run_after=datetime.datetime(2031, 1, 1))


def test_run_after_schedules_the_event():
    later = timezone.now() + datetime.timedelta(hours=1)
    result = task_functions.add.using(run_after=later).enqueue(1, 1)
    row = OutboxMessage.objects.scheduled().get()
    assert abs(row.next_retry_at - later) < datetime.timedelta(milliseconds=2)
    assert TaskRecord.objects.get(pk=result.id).run_after == later


def test_an_unknown_result_does_not_exist():
    backend = task_backends["default"]
    assert isinstance(backend, OutboxBackend)
    for result_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result_id)


def test_outbox_tasks_modules_are_discovered_only_with_the_backend(settings):
    from django_outbox.apps import uses_outbox_tasks

    assert uses_outbox_tasks()
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend"}}
    assert not uses_outbox_tasks()


def test_the_admin_shows_a_result(admin_client):
    result = task_functions.add.enqueue(1, 2)
    TaskRecord.objects.filter(pk=result.id).update(
        status="FAILED",
        errors=[{"exception_class_path": "builtins.RuntimeError", "traceback": "<boom>"}],
    )
    listing = admin_client.get(reverse("admin:django_outbox_taskrecord_changelist"))
    assert result.id in listing.content.decode()
    page = admin_client.get(reverse("admin:django_outbox_taskrecord_change", args=[result.id]))
    html = page.content.decode()
    assert page.status_code == 200 and "builtins.RuntimeError" in html
    assert "&lt;boom&gt;" in html  # escaped
    row = OutboxMessage.objects.get()
    assert reverse("admin:django_outbox_outboxmessage_change", args=[row.pk]) in html
    assert "&quot;args&quot;" in html  # the arguments, pretty-printed and escaped


# ------------------------------------------------------- through the relay and the consumer


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_the_consumer_runs_the_task_once_and_stores_its_return_value(broker):
    add = task_functions.add.enqueue(20, 22)
    opened = task_functions.open_conversation.enqueue(title="from a task")
    deliver(broker)
    result = task_functions.add.get_result(add.id)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    assert result.started_at and result.finished_at and len(result.worker_ids) == 1
    result = task_functions.open_conversation.get_result(opened.id)
    assert result.return_value == Conversation.objects.get(title="from a task").pk
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.CONSUMED}
    add.refresh()
    assert add.status == TaskResultStatus.SUCCESSFUL

    # Delivered again (the admin's "Deliver again"): the result is final, nothing runs.
    OutboxMessage.objects.all().deliver_again(timezone.now())
    deliver(broker)
    assert Conversation.objects.filter(title="from a task").count() == 1
    assert len(task_functions.add.get_result(add.id).worker_ids) == 1


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_raising_task_is_failed_at_once_and_its_writes_rolled_back(broker):
    result = task_functions.explode.enqueue("nope")
    deliver(broker)
    stored = task_functions.explode.get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    (error,) = stored.errors
    assert error.exception_class is RuntimeError
    assert "explode refuses nope" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        stored.return_value  # noqa: B018
    assert not Conversation.objects.filter(title="nope").exists()
    row = OutboxMessage.objects.get()
    assert row.status == Status.CONSUMED and row.retry_count == 0  # not retried


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_task_taking_its_context_sees_its_attempt(broker):
    result = task_functions.which_attempt.enqueue()
    deliver(broker)
    assert task_functions.which_attempt.get_result(result.id).return_value == 1


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_run_after_is_respected(broker):
    result = task_functions.add.using(
        run_after=timezone.now() + datetime.timedelta(seconds=1.5)
    ).enqueue(1, 2)
    Relay(burst=True).run()
    assert OutboxMessage.objects.get().status == Status.PENDING  # not sent early
    row = OutboxMessage.objects.get()
    wait_for(lambda: timezone.now() > row.next_retry_at, 10, "the task's run_after")
    deliver(broker)
    stored = task_functions.add.get_result(result.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL and stored.return_value == 3
    assert stored.started_at >= row.next_retry_at


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_task_event_the_go_service_wrote_runs_the_task(broker):
    event = Event(
        event_type="tests.task_functions.add",
        data={"args": [5], "kwargs": {"b": 6}},
        key="go-key",
    )
    OutboxMessage.objects.create(
        event_type=event.event_type,
        topic=broker,
        message_key=event.key,
        payload=event.to_json(),
        status=Status.PENDING,
    )
    deliver(broker)
    result = task_functions.add.get_result(str(event.event_id))
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 11
    assert result.kwargs == {"b": 6} and result.enqueued_at == event.occurred_at


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_task_event_with_bad_data_is_failed_not_retried(broker):
    event = Event(event_type="tests.task_functions.add", data=[1, 2], key="k")
    OutboxMessage.objects.create(
        event_type=event.event_type,
        topic=broker,
        message_key=event.key,
        payload=event.to_json(),
        status=Status.PENDING,
    )
    deliver(broker)
    result = task_functions.add.get_result(str(event.event_id))
    assert result.status == TaskResultStatus.FAILED
    assert '"args": [...]' in result.errors[0].traceback
    assert OutboxMessage.objects.get().status == Status.CONSUMED
