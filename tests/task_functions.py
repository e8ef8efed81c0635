"""Tasks declared on ``django_outbox.tasks.OutboxBackend`` (tests/settings.py's TASKS)."""

from __future__ import annotations

from django_outbox.tasks.framework import TaskContext, task
from testproject.chat.models import Conversation


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def open_conversation(title: str) -> int:
    """Writes to the database: its effect commits with the task's result."""
    return Conversation.objects.create(title=title).pk


@task
def explode(title: str) -> None:
    Conversation.objects.create(title=title)  # rolled back with the failure
    raise RuntimeError(f"explode refuses {title}")


@task(takes_context=True)
def which_attempt(context: TaskContext) -> int:
    return context.attempt


def a_task_function_whose_name_is_far_too_long_for_the_biz_type_column() -> None:
    """Not a task until ``task(...)`` is applied to it (tests/test_tasks.py)."""
