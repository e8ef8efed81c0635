"""The one import of Django's Tasks framework: ``django.tasks`` (Django 6) or the
``django-tasks`` backport (``django_tasks``, Django 5.2).

Only names both offer are used; the one they spell differently, the exception for
an invalid task, gets one name here. The type checker reads Django 6's (django-stubs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.tasks import TaskResultStatus, exceptions, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult
    from django.tasks.signals import task_enqueued, task_finished, task_started
else:
    try:
        from django.tasks import TaskResultStatus, exceptions, task, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskContext, TaskError, TaskResult
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:
        try:
            import django_tasks  # noqa: F401
        except ImportError as exc:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                "django_outbox.tasks needs Django's Tasks framework: Django 6's django.tasks, "
                'or on Django 5.2 the backport: pip install "django-outbox[tasks]"'
            ) from exc
        from django_tasks import TaskResultStatus, exceptions, task, task_backends
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskContext, TaskError, TaskResult
        from django_tasks.signals import task_enqueued, task_finished, task_started

#: ``InvalidTask`` in Django 6, ``InvalidTaskError`` in the backport.
InvalidTask: type[Exception] = (
    vars(exceptions).get("InvalidTask") or vars(exceptions)["InvalidTaskError"]
)
TaskResultDoesNotExist = exceptions.TaskResultDoesNotExist


def set_return_value(result: TaskResult, value: Any) -> None:
    """Give a stored result its return value. The one private name used: both frameworks
    keep it in the frozen dataclass's ``_return_value`` (read by ``return_value``;
    tests/test_tasks.py reads it back through the public property)."""
    object.__setattr__(result, "_return_value", value)


__all__ = [
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
    "set_return_value",
]
