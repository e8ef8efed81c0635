"""``OutboxBackend``: ``enqueue()`` is ``publish_event()``, ``get_result()`` reads
``django_outbox_task_result``."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from django_outbox.conf import outbox_settings
from django_outbox.exceptions import InvalidEvent
from django_outbox.models.task_results import TaskRecord, TaskStatus
from django_outbox.publish.write import EVENT_TYPE_MAX, publish_event
from django_outbox.tasks import running
from django_outbox.tasks.framework import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    task_enqueued,
)
from django_outbox.tasks.results import to_result


class OutboxBackend(BaseTaskBackend):
    """Tasks as outbox events: the event type is the task function's module path.

    ``OPTIONS`` (all optional):

    - ``DATABASE``: the alias the rows and results are written to (default
      ``OUTBOX_DATABASE``);
    - ``TOPIC``: the Kafka topic of task events (default: ``OUTBOX_TOPICS`` /
      ``OUTBOX_DEFAULT_TOPIC``, as for any event);
    - ``EVENT_TYPES``: ``{"module.path.of.task": "event.type"}``, for a path longer
      than the 64 characters of ``biz_type``, or a name of your choosing.
    """

    supports_defer = True
    supports_get_result = True
    supports_async_task = False
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        event_types = self.options.get("EVENT_TYPES", {})
        if not isinstance(event_types, dict):
            raise InvalidTask(f"TASKS[{alias!r}]['OPTIONS']['EVENT_TYPES'] must be a dict")
        self.event_types: dict[str, str] = dict(event_types)

    @property
    def database(self) -> str:
        return str(self.options.get("DATABASE") or outbox_settings.database)

    @property
    def outbox_database(self) -> str:
        """The alias the task rows of this backend live on (read by ``running``)."""
        return self.database

    @property
    def topic(self) -> str | None:
        return self.options.get("TOPIC")

    def event_type_of(self, task: Task) -> str:
        """The event type of ``task``'s events (``InvalidTask`` if it cannot fit)."""
        path = task.module_path
        name = self.event_types.get(path, path)
        if not isinstance(name, str) or not name or len(name) > EVENT_TYPE_MAX:
            raise InvalidTask(
                f"the event type of task {path!r} would be {name!r}, {len(str(name))} "
                f"characters; biz_type holds at most {EVENT_TYPE_MAX}: name it in "
                f"TASKS[{self.alias!r}]['OPTIONS']['EVENT_TYPES'][{path!r}]"
            )
        return name

    def validate_task(self, task: Task) -> None:
        """The framework's checks, the event type's length, then the task's handler.

        The framework validates every task when it is declared (``@task``), so the
        module that declares it registers the handler that runs it: importing the
        app's ``tasks`` modules (``AppConfig.ready``) is enough for ``outbox_consume``.
        """
        super().validate_task(task)
        running.register(self.event_type_of(task), task)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Write the task as a ``pending`` event, and its ``READY`` result, in the
        caller's transaction on ``DATABASE``; nothing is written on bad input."""
        self.validate_task(task)
        arguments, keywords = list(args), dict(kwargs)
        data = {"args": arguments, "kwargs": keywords}
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidTask(
                f"the arguments of task {task.module_path!r} must be JSON values "
                f"(str, int, float, bool, None, lists and dicts of them): {exc}"
            ) from exc
        alias = self.database
        now = timezone.now()
        try:
            with transaction.atomic(using=alias):
                message = publish_event(
                    self.event_type_of(task),
                    data,
                    topic=self.topic,
                    using=alias,
                    deliver_at=task.run_after,
                )
                result_id = str(message.event.event_id)
                record = TaskRecord.objects.using(alias).create(
                    id=result_id,
                    task_path=task.module_path,
                    event_type=message.event_type,
                    backend=self.alias,
                    status=TaskStatus.READY,
                    args=arguments,
                    kwargs=keywords,
                    outbox_id=message.pk,
                    run_after=task.run_after,
                    enqueued_at=now,
                )
        except InvalidEvent as exc:
            raise InvalidTask(str(exc)) from exc
        result = to_result(record, task)
        transaction.on_commit(
            lambda: task_enqueued.send(type(self), task_result=result), using=alias
        )
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The stored result ``result_id`` (``TaskResultDoesNotExist`` if none)."""
        try:
            key = str(uuid.UUID(str(result_id)))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        record = TaskRecord.objects.using(self.database).filter(pk=key).first()
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return to_result(record)
