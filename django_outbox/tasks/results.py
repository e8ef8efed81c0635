"""A task's stored record as the framework's ``TaskResult``."""

from __future__ import annotations

from django.utils.module_loading import import_string

from django_outbox.models.task_results import TaskRecord
from django_outbox.tasks.framework import (
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    set_return_value,
)


def to_result(record: TaskRecord, task: Task | None = None) -> TaskResult:
    """A ``TaskResult`` of the framework from a stored record (of ``task``, or of the
    task its ``task_path`` names)."""
    if task is None:
        task = import_string(record.task_path)
    if not isinstance(task, Task):
        raise TaskResultDoesNotExist(f"{record.task_path!r} is no longer a task ({record.pk})")
    result: TaskResult = TaskResult(
        task=task,
        id=record.pk,
        status=TaskResultStatus(record.status),
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[TaskError(**error) for error in record.errors],
        worker_ids=list(record.worker_ids),
    )
    set_return_value(result, record.return_value)
    return result
