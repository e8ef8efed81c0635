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
from django.db.models.functions import TruncSecond
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


class OutboxMessage(models.Model):
    """One event waiting for, or done with, its trip through Kafka."""

    id = models.BigAutoField(_("id"), primary_key=True)
    event_type = models.CharField(
        _("event type"), max_length=64, db_column="biz_type", db_comment="事件类型"
    )
    topic = models.CharField(_("topic"), max_length=128, db_comment="Kafka Topic")
    message_key = models.CharField(_("message key"), max_length=128, db_comment="Kafka 消息键")
    payload = models.TextField(_("payload"), db_comment="业务载荷(JSON)")
    status = models.CharField(
        _("status"),
        max_length=32,
        choices=Status.choices,
        default=Status.PENDING,
        db_comment="pending/published/consumed/dead",
    )
    retry_count = models.BigIntegerField(
        _("retry count"), default=0, db_default=0, db_comment="已重试次数"
    )
    max_retry = models.BigIntegerField(
        _("max retry"), default=20, db_default=20, db_comment="最大重试次数"
    )
    next_retry_at = MillisecondDateTimeField(
        _("next retry at"), null=True, blank=True, db_comment="下次重试时间"
    )
    last_error = ShortTextField(_("last error"), null=True, blank=True, db_comment="最后一次错误")
    published_at = MillisecondDateTimeField(
        _("published at"), null=True, blank=True, db_comment="投递到 Kafka 时间"
    )
    consumed_at = MillisecondDateTimeField(
        _("consumed at"), null=True, blank=True, db_comment="消费完成时间"
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
