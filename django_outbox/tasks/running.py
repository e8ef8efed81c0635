"""The consumer's side of ``OutboxBackend``: the handler that runs a task once.

Each task declared on an ``OutboxBackend`` gets a handler for its event type in the
outbox's registry (``backend.validate_task``). The consumer calls it in the
transaction that marks the row ``consumed`` (docs/consumer.rst): the task's own
writes to that database, its result and the row commit together, once.

A task that raises is ``FAILED`` at once and its row ``consumed``: its writes are
rolled back (a savepoint), the error is recorded, it is not run again (as with
Django's ``ImmediateBackend``; enqueue it again to retry). Database errors that
lose the connection (``OperationalError``, ``InterfaceError``) are not the task's
outcome: they propagate, and the consumer retries the same record.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from django_outbox.conf import outbox_settings
from django_outbox.consumer.database import DATABASE_ERRORS
from django_outbox.models.attempts import worker_name
from django_outbox.models.task_results import TaskRecord, TaskStatus
from django_outbox.registry import registry
from django_outbox.tasks.framework import (
    Task,
    TaskContext,
    task_backends,
    task_finished,
    task_started,
)
from django_outbox.tasks.results import to_result

if TYPE_CHECKING:
    from django_outbox.envelope import Event

logger = logging.getLogger("django_outbox.tasks")


class TaskHandler:
    """The handler of one task's events (named after the task, for the registry)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.__module__ = task.func.__module__
        self.__qualname__ = task.func.__qualname__

    def __call__(self, event: Event) -> None:
        run(self.task, event)


def register(event_type: str, task: Task) -> None:
    """Make ``task`` run for the events of ``event_type`` (again: the same name, no error)."""
    registry.register(event_type, TaskHandler(task))


def _arguments(data: Any) -> tuple[list[Any], dict[str, Any]] | None:
    if not isinstance(data, dict) or set(data) - {"args", "kwargs"}:
        return None
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return args, kwargs


def run(task: Task, event: Event) -> None:
    """Run ``task`` for ``event`` unless its result is final already; record the outcome."""
    backend = task_backends[task.backend]
    # Duck-typed: the backend module imports this one.
    alias = getattr(backend, "outbox_database", None) or outbox_settings.database
    now = timezone.now()
    record = _locked_record(alias, task, event)
    if record.status in (TaskStatus.SUCCESSFUL, TaskStatus.FAILED):
        return  # delivered again after its outcome committed (another consumer group)
    record.status = TaskStatus.RUNNING
    record.started_at = record.last_attempted_at = now
    record.worker_ids = [*record.worker_ids, worker_name()]
    arguments = _arguments(event.data)
    if arguments is not None:
        record.args, record.kwargs = arguments
    result = to_result(record)
    task_started.send(type(backend), task_result=result)
    try:
        if arguments is None:
            raise ValueError(
                f"the data of task event {event.event_id} must be "
                f'{{"args": [...], "kwargs": {{...}}}}, not {event.data!r}'
            )
        with transaction.atomic(using=alias):
            record.return_value = _json_value(_call(task, result, record), task)
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        _record_failure(record, task, event, exc)
    else:
        record.status = TaskStatus.SUCCESSFUL
    record.finished_at = timezone.now()
    record.save(using=alias)
    task_finished.send(type(backend), task_result=to_result(record))


def _locked_record(alias: str, task: Task, event: Event) -> TaskRecord:
    """The event's result row, locked; created if the event did not come through enqueue."""
    records = TaskRecord.objects.using(alias)
    record = records.select_for_update().filter(pk=str(event.event_id)).first()
    if record is None:  # enqueued by another service, straight into the table
        record = records.create(
            id=str(event.event_id),
            task_path=task.module_path,
            event_type=event.event_type,
            backend=task.backend,
            enqueued_at=event.occurred_at,
        )
    return record


def _call(task: Task, result: Any, record: TaskRecord) -> Any:
    if task.takes_context:
        return task.call(TaskContext(task_result=result), *record.args, **record.kwargs)
    return task.call(*record.args, **record.kwargs)


def _record_failure(record: TaskRecord, task: Task, event: Event, exc: Exception) -> None:
    record.status = TaskStatus.FAILED
    record.errors = [
        *record.errors,
        {
            "exception_class_path": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": "".join(traceback.format_exception(exc)),
        },
    ]
    logger.warning(
        "task %s (result %s) failed: %s",
        task.module_path,
        record.pk,
        exc,
        extra={"event_id": str(event.event_id)},
    )


def _json_value(value: Any, task: Task) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the return value of task {task.module_path!r} is not a JSON value: {exc}"
        ) from exc
