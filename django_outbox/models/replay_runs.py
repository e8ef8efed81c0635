"""The runs of ``manage.py outbox_replay``: who sent what again, when, and how far it got.

One row per run, written before the first record goes out and after each batch that
Kafka acknowledged (``last_id``, ``sent``), so that an interrupted run resumes where
its acknowledgements stopped (``--resume RUN_ID``). The records of a run carry its
``token`` in the header ``outbox_replay_run``: a consumer group handles a run's event
once, whatever the resends. An app-owned table; the legacy one does not change.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField, clip_error


class RunState(models.TextChoices):
    RUNNING = "running", _("running")
    INTERRUPTED = "interrupted", _("interrupted (resumable)")
    DONE = "done", _("done")


class ReplayRun(models.Model):
    """One run of ``outbox_replay``: its filters, its target group, its progress."""

    id = models.BigAutoField(_("id"), primary_key=True)
    token = models.UUIDField(_("token (header outbox_replay_run)"), default=uuid.uuid4, unique=True)
    operator = models.CharField(_("operator"), max_length=150)
    #: The consumer group that handles the events again; empty: every group.
    target_group = models.CharField(_("consumer group"), max_length=255, blank=True)
    source = models.CharField(_("source (table alias or archive file)"), max_length=1024)
    filters = models.JSONField(_("filters"), default=dict)
    state = models.CharField(
        _("state"), max_length=16, choices=RunState.choices, default=RunState.RUNNING
    )
    matched = models.BigIntegerField(_("rows matched"), default=0)
    sent = models.BigIntegerField(_("records acknowledged"), default=0)
    #: The last row id (an archive: line number) whose record Kafka acknowledged, in order.
    last_id = models.BigIntegerField(_("last id sent"), null=True, blank=True)
    error = models.TextField(_("last error"), blank=True, default="")
    started_at = MillisecondDateTimeField(_("started at"), auto_now_add=True)
    updated_at = MillisecondDateTimeField(_("updated at"), auto_now=True)
    finished_at = MillisecondDateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_replay_run"
        verbose_name = _("replay run")
        verbose_name_plural = _("replay runs")
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"replay run #{self.pk} ({self.state})"

    @property
    def group_label(self) -> str:
        return self.target_group or "every group"

    # The run's own state changes, each writing only what it changes.

    def advance(self, last_id: int, sent: int) -> None:
        """Kafka acknowledged the records up to ``last_id``: ``sent`` more."""
        self.last_id = last_id
        self.sent += sent
        self._save("last_id", "sent")

    def interrupt(self, error: str) -> None:
        """Stopped before the end (a signal, Kafka away): resumable from ``last_id``."""
        self.state = RunState.INTERRUPTED
        self.error = clip_error(error)
        self._save("state", "error")

    def resume(self) -> None:
        self.state = RunState.RUNNING
        self._save("state")

    def finish(self) -> None:
        self.state = RunState.DONE
        self.error = ""
        self.finished_at = timezone.now()
        self._save("state", "error", "finished_at")

    def _save(self, *fields: str) -> None:
        self.save(update_fields=[*fields, "updated_at"])


def table_source_name(alias: str) -> str:
    """What a run of the rows of ``alias`` records as its ``source``."""
    return f"table:{alias}"
