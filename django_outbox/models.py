"""The legacy outbox table ``agent_outbox_messages``, shared with the Go service.

The model mirrors the Go model (see README.rst, "The table") column for column:
no extra columns, no extra constraints. ``event_type`` lives in the historical
column ``biz_type``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce, TruncSecond
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .fields import MillisecondDateTimeField, ShortTextField, truncate_to_millis
from .pruning import delete_in_chunks

if TYPE_CHECKING:
    from .envelope import Event


class Status(models.TextChoices):
    """The four statuses, a contract shared with the Go service."""

    PENDING = "pending", _("pending")
    PUBLISHED = "published", _("published")
    CONSUMED = "consumed", _("consumed")
    DEAD = "dead", _("dead")


#: Statuses after which nothing happens to a row by itself.
FINAL_STATUSES = (Status.CONSUMED, Status.DEAD)


def lease_expiry(now: datetime.datetime, seconds: float) -> datetime.datetime:
    """When a relay's claim made at ``now`` for ``seconds`` runs out.

    The legacy table has no lock columns, so a claim lives in ``next_retry_at``.
    A lease expiry is always a whole second and a backoff time never is (see
    ``retry_time``): that is how the admin tells "in flight" from "backing off".
    Rounding up also makes every new lease later than any lease that expired
    before it was taken, so write-backs fenced on the lease value are unique.
    """
    expiry = now + datetime.timedelta(seconds=seconds)
    if expiry.microsecond:
        expiry = expiry.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return expiry


def retry_time(now: datetime.datetime, delay: float) -> datetime.datetime:
    """``now + delay`` at millisecond precision, never on a whole second (see ``lease_expiry``)."""
    moment = truncate_to_millis(now + datetime.timedelta(seconds=delay))
    if moment.microsecond == 0:
        moment += datetime.timedelta(milliseconds=1)
    return moment


class OutboxMessageQuerySet(models.QuerySet["OutboxMessage"]):
    def pending(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PENDING)

    def due(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows whose retry window (or relay lease) is over or never set."""
        now = now or timezone.now()
        return self.filter(
            Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now), status=Status.PENDING
        )

    def in_flight(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows a relay has claimed and whose lease has not run out."""
        now = now or timezone.now()
        return self.filter(
            status=Status.PENDING, next_retry_at__gt=now, next_retry_at=TruncSecond("next_retry_at")
        )

    def backing_off(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows waiting for their retry window after a failure."""
        now = now or timezone.now()
        return self.filter(status=Status.PENDING, next_retry_at__gt=now).exclude(
            next_retry_at=TruncSecond("next_retry_at")
        )

    def published(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PUBLISHED)

    def consumed(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.CONSUMED)

    def dead(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.DEAD)

    def finished_before(
        self, cutoff: datetime.datetime, statuses: tuple[str, ...] = (Status.CONSUMED,)
    ) -> OutboxMessageQuerySet:
        """Rows in a final status whose last change is older than ``cutoff``."""
        final = [status for status in statuses if status in FINAL_STATUSES]
        return self.filter(status__in=final, updated_at__lt=cutoff)

    def prune(
        self,
        cutoff: datetime.datetime,
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """Delete final rows older than ``cutoff``, in chunks; return how many went.

        Only ``consumed`` and ``dead`` rows can go (never ``pending`` or
        ``published``); one short statement per chunk keeps locks small on a busy table.
        """
        return delete_in_chunks(self.finished_before(cutoff, statuses), chunk)

    # ------------------------------------------------------------------ consumer side
    # Every status change the consumer makes (django_outbox/consumer/local.py). Each is
    # one conditional UPDATE fenced on a handleable status, on rows the consumer has
    # locked (``locked_for_handling``) in the same transaction.

    #: Statuses in which a row may still be handled. ``pending`` too: the consumer can
    #: get the record before the relay has written ``published`` back.
    handleable_statuses = (Status.PENDING, Status.PUBLISHED)

    def locked_for_handling(self, pks: Iterable[int]) -> OutboxMessageQuerySet:
        """The rows ``pks``, locked ``FOR UPDATE`` in ascending id order, in one query.

        The consumer's only way to lock outbox rows: one order everywhere, so two
        consumers, or a consumer and a relay writing back in id order, cannot deadlock.
        """
        return self.select_for_update().filter(pk__in=sorted(set(pks))).order_by("pk")

    def mark_consumed(self, pks: Iterable[int], now: datetime.datetime) -> int:
        """The rows whose handler succeeded: ``consumed``, in one ``UPDATE``."""
        now = truncate_to_millis(now)
        return self.filter(pk__in=list(pks), status__in=self.handleable_statuses).update(
            status=Status.CONSUMED,
            consumed_at=now,
            updated_at=now,
            # Sent it was: the relay's own write-back may not have landed yet, and it
            # never will (it is fenced on status='pending').
            # Truncated: Value() bypasses the field's own truncation.
            published_at=Coalesce(
                "published_at", Value(now, output_field=MillisecondDateTimeField())
            ),
        )

    def handler_failed(
        self, row: OutboxMessage, error: str, now: datetime.datetime, delay: float
    ) -> bool:
        """Count a failed handling of ``row`` (locked): back to pending after ``delay``
        seconds, or ``dead`` once ``max_retry`` is reached. Updates ``row``; True if dead."""
        retry_count = row.retry_count + 1
        dead = retry_count >= row.max_retry
        next_retry_at = None if dead else retry_time(now, delay)
        status = Status.DEAD if dead else Status.PENDING
        changed = self.filter(pk=row.pk, status__in=self.handleable_statuses).update(
            retry_count=retry_count,
            last_error=error,
            status=status,
            next_retry_at=next_retry_at,
            updated_at=now,
        )
        if changed:
            row.retry_count, row.last_error = retry_count, error
            row.status, row.next_retry_at = status, next_retry_at
        return dead

    def give_up(self, pk: int, error: str, now: datetime.datetime | None = None) -> int:
        """``dead`` with ``error``, if still handleable: no consumer will ever take it."""
        return self.filter(pk=pk, status__in=self.handleable_statuses).update(
            status=Status.DEAD,
            next_retry_at=None,
            last_error=error,
            updated_at=now or timezone.now(),
        )

    def send_again_later(self, pk: int, error: str, delay: float) -> int:
        """Back to the relay in ``delay`` seconds without spending a retry (no handler yet)."""
        now = timezone.now()
        return self.filter(pk=pk, status__in=self.handleable_statuses).update(
            status=Status.PENDING,
            next_retry_at=retry_time(now, delay),
            last_error=error,
            updated_at=now,
        )

    # ------------------------------------------------------------------ end of consumer side


class OutboxMessage(models.Model):
    """One event waiting for, or done with, its trip through Kafka."""

    id = models.BigAutoField(_("id"), primary_key=True)
    event_type = models.CharField(
        _("event type"), max_length=64, db_column="biz_type", db_comment="event type"
    )
    topic = models.CharField(_("topic"), max_length=128, db_comment="Kafka Topic")
    message_key = models.CharField(_("message key"), max_length=128, db_comment="Kafka message key")
    payload = models.TextField(_("payload"), db_comment="business payload (JSON)")
    status = models.CharField(
        _("status"),
        max_length=32,
        choices=Status.choices,
        default=Status.PENDING,
        db_comment="pending/published/consumed/dead",
    )
    retry_count = models.BigIntegerField(
        _("retry count"), default=0, db_default=0, db_comment="retries so far"
    )
    max_retry = models.BigIntegerField(
        _("max retry"), default=20, db_default=20, db_comment="max retries"
    )
    next_retry_at = MillisecondDateTimeField(
        _("next retry at"), null=True, blank=True, db_comment="next retry time"
    )
    last_error = ShortTextField(_("last error"), null=True, blank=True, db_comment="last error")
    published_at = MillisecondDateTimeField(
        _("published at"), null=True, blank=True, db_comment="time written to Kafka"
    )
    consumed_at = MillisecondDateTimeField(
        _("consumed at"), null=True, blank=True, db_comment="time consumption finished"
    )
    created_at = MillisecondDateTimeField(_("created at"), null=True, auto_now_add=True)
    updated_at = MillisecondDateTimeField(_("updated at"), null=True, auto_now=True)

    objects = OutboxMessageQuerySet.as_manager()

    class Meta:
        db_table = "agent_outbox_messages"
        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        # Each admin action has its own permission (no table change: Django's auth rows only).
        permissions = [
            ("retry_outboxmessage", _("Can retry outbox messages now")),
            ("give_up_outboxmessage", _("Can give up outbox messages (mark dead)")),
            ("redeliver_outboxmessage", _("Can deliver published or consumed messages again")),
        ]
        indexes = [
            models.Index(
                fields=["status", "next_retry_at", "event_type"], name="idx_outbox_status_next"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk} ({self.status})"

    @property
    def event(self) -> Event:
        """The envelope stored in ``payload``, parsed (raises ``MalformedEvent``)."""
        from .envelope import Event

        return Event.from_json(self.payload)


from .inbox import InboxEntry, RejectedRecord  # noqa: E402,F401
