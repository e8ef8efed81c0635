"""The legacy outbox table ``agent_outbox_messages``, shared with the Go service.

The model mirrors the Go model (see README.rst, "The table") column for column:
no extra columns, no extra constraints. ``event_type`` lives in the historical
column ``biz_type``.

Its QuerySet is composed here of the read queries (``queries``) and the named state
transitions, one mixin per actor (``transitions``); the statuses and the times of
``next_retry_at`` are in ``statuses``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField, ShortTextField
from django_outbox.models.statuses import (
    FINAL_STATUSES,
    Status,
    lease_expiry,
    retry_time,
    scheduled_time,
)
from django_outbox.models.transitions import (
    ConsumerTransitions,
    OperatorTransitions,
    RelayTransitions,
    WriterTransitions,
)

if TYPE_CHECKING:
    from django_outbox.envelope import Event

__all__ = [
    "FINAL_STATUSES",
    "OutboxMessage",
    "OutboxMessageQuerySet",
    "Status",
    "lease_expiry",
    "retry_time",
    "scheduled_time",
]


# django-stubs gives each mixin an ``as_manager()`` of its own type: only the composed
# one is ever called.
class OutboxMessageQuerySet(  # type: ignore[override]
    WriterTransitions, RelayTransitions, OperatorTransitions, ConsumerTransitions
):
    """The outbox rows by intent (``queries``) and every change of their state
    (``transitions``)."""


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
            ("release_key_outboxmessage", _("Can release the key a dead message holds")),
            ("send_now_outboxmessage", _("Can send scheduled outbox messages now")),
            ("cancel_outboxmessage", _("Can cancel scheduled outbox messages")),
        ]
        indexes = [
            models.Index(
                fields=["status", "next_retry_at", "event_type"], name="idx_outbox_status_next"
            )
        ]
        # PostgreSQL and SQLite also get idx_outbox_status_id (status, id, next_retry_at)
        # for the relay's claim, from migration 0007 (not declared here: MySQL/MariaDB
        # must not get it; docs/decisions/0002-claim-index.rst).

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk} ({self.status})"

    @property
    def event(self) -> Event:
        """The envelope stored in ``payload``, parsed (raises ``MalformedEvent``)."""
        from django_outbox.envelope import Event

        return Event.from_json(self.payload)
