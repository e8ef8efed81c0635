"""The legacy outbox table ``agent_outbox_messages``, shared with the Go service.

The model mirrors the Go model (see README.rst, "The table") column for column:
no extra columns, no extra constraints. ``event_type`` lives in the historical
column ``biz_type``.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .fields import MillisecondDateTimeField, ShortTextField

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


class OutboxMessageQuerySet(models.QuerySet["OutboxMessage"]):
    def pending(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PENDING)

    def due(self, now: datetime.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending rows whose retry window (or relay lease) is over or never set."""
        now = now or timezone.now()
        return self.filter(
            Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now), status=Status.PENDING
        )

    def published(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.PUBLISHED)

    def consumed(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.CONSUMED)

    def dead(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.DEAD)


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
