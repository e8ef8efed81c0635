"""The history of failed attempts of outbox rows, in a table of the app's own.

The legacy table keeps only the last error; ``FailedAttempt`` keeps one row per
failure: when, which worker (``hostname:pid``), the attempt number and the error.
It is written only on failure, by the named transitions of
``models.OutboxMessageQuerySet`` that count one (``back_off``, ``give_up``,
``handler_failed``, ``abandon``), in the database and the transaction of the status
change, one ``INSERT`` per write-back.

An attempt lives in the same database as its row. ``outbox_prune`` deletes the
attempts older than its cutoff: every attempt of a pruned row is (a failure also
changes the row's ``updated_at``), so the history goes with the row.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterable

from django.db import models
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField, clip_error
from django_outbox.models.pruning import delete_in_chunks


class Source(models.TextChoices):
    RELAY = "relay", _("relay (sending to Kafka)")
    CONSUMER = "consumer", _("consumer (handler)")


_worker: tuple[int, str] | None = None


def worker_name() -> str:
    """``hostname:pid`` of this process (computed again after a fork)."""
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}"[:255])
    return _worker[1]


class FailedAttemptQuerySet(models.QuerySet["FailedAttempt"]):
    def of(self, outbox_id: int) -> FailedAttemptQuerySet:
        """The attempts of one outbox row, newest first."""
        return self.filter(outbox_id=outbox_id).order_by("-id")

    def prune(self, cutoff: datetime.datetime, chunk: int | None = None) -> int:
        """Delete the attempts older than ``cutoff``, in chunks; return how many went."""
        return delete_in_chunks(self.filter(failed_at__lt=cutoff), chunk)


class FailedAttempt(models.Model):
    """One failed attempt to send (relay) or handle (consumer) an outbox row."""

    id = models.BigAutoField(_("id"), primary_key=True)
    outbox_id = models.BigIntegerField(_("outbox id"))
    attempt = models.PositiveIntegerField(_("attempt"))
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    worker = models.CharField(_("worker (host:pid)"), max_length=255, blank=True)
    error = models.TextField(_("error"), blank=True, default="")
    dead = models.BooleanField(_("made the row dead"), default=False)
    failed_at = MillisecondDateTimeField(_("failed at"))

    objects = FailedAttemptQuerySet.as_manager()

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_failed_attempt"
        verbose_name = _("failed attempt")
        verbose_name_plural = _("failed attempts")
        indexes = [
            models.Index(fields=["outbox_id", "id"], name="outbox_attempt_row_idx"),
            models.Index(fields=["failed_at"], name="outbox_attempt_failed_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.outbox_id} attempt {self.attempt}"


def record(
    alias: str,
    attempts: Iterable[tuple[int, int]],
    *,
    error: str,
    source: str,
    now: datetime.datetime,
    dead: bool = False,
) -> None:
    """One ``INSERT`` of the failed attempts ``(outbox id, attempt number)``, all with ``error``."""
    worker = worker_name()
    error = clip_error(error)
    FailedAttempt.objects.using(alias).bulk_create(
        [
            FailedAttempt(
                outbox_id=pk,
                attempt=max(number, 0),
                source=source,
                worker=worker,
                error=error,
                dead=dead,
                failed_at=now,
            )
            for pk, number in attempts
        ]
    )
