"""The results of Django tasks run through the outbox (``django_outbox.tasks``).

One row per task enqueued with ``OutboxBackend`` (or per task event the Go service
wrote), keyed by the event's ``event_id``: the task result's id. It lives in the
database of the outbox row and is written in that row's transactions: ``READY`` with
the row at ``enqueue()``, the outcome with the row's ``consumed`` in the consumer's
transaction, so a task's effects, its result and its row commit together.

No import of the Tasks framework here: the table exists (and migrates) whether or
not ``django-tasks`` is installed.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class TaskStatus(models.TextChoices):
    """The values of the Tasks framework's ``TaskResultStatus``."""

    READY = "READY", _("ready")
    RUNNING = "RUNNING", _("running")
    FAILED = "FAILED", _("failed")
    SUCCESSFUL = "SUCCESSFUL", _("successful")


class TaskRecord(models.Model):
    """The stored state of one task result."""

    id = models.CharField(_("result id"), max_length=64, primary_key=True)
    task_path = models.CharField(_("task"), max_length=255)
    event_type = models.CharField(_("event type"), max_length=64)
    backend = models.CharField(_("task backend"), max_length=64)
    status = models.CharField(
        _("status"), max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY
    )
    args = models.JSONField(_("args"), default=list)
    kwargs = models.JSONField(_("kwargs"), default=dict)
    return_value = models.JSONField(_("return value"), null=True, blank=True)
    #: ``[{"exception_class_path": ..., "traceback": ...}]``, one per failed run.
    errors = models.JSONField(_("errors"), default=list)
    worker_ids = models.JSONField(_("workers"), default=list)
    outbox_id = models.BigIntegerField(_("outbox row"), null=True, blank=True)
    run_after = models.DateTimeField(_("run after"), null=True, blank=True)
    enqueued_at = models.DateTimeField(_("enqueued at"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    last_attempted_at = models.DateTimeField(_("last attempted at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        db_table = "django_outbox_task_result"
        verbose_name = _("task result")
        verbose_name_plural = _("task results")

    def __str__(self) -> str:
        return f"{self.task_path} {self.id} ({self.status})"
