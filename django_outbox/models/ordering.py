"""Strict key order (``OUTBOX_STRICT_ORDER``): a row waits while an earlier row of its key is open.

By default the relay, the only sender, sends the rows of a key in id order while
nothing fails; a failed row backs off and later rows of its key go ahead of it.
In strict order, for every event type or for those listed, a row is not claimed
while an earlier row with the same topic and key is still ``pending`` (waiting,
backing off or in flight) or ``dead``. So the rows of one key leave one at a time
(each after the previous one's acknowledgement is recorded), and a dead row holds
its key until an operator retries it, or *releases* it: a ``ReleasedRow`` says that
later rows may go ahead of that dead row.

The cost: one ``NOT EXISTS`` per candidate row, answered through the
``(status, next_retry_at, biz_type)`` index (the open rows: pending and dead), and
at most one row per key per round trip to Kafka for a busy key.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext_lazy as _

from django_outbox.conf import outbox_settings


class ReleasedRow(models.Model):
    """A dead outbox row whose key an operator released: it no longer holds later rows.

    The app's own table: the shared legacy table gets no column for it.
    """

    outbox_id = models.BigIntegerField(_("outbox id"))
    database = models.CharField(_("database alias"), max_length=100)
    released_at = models.DateTimeField(_("released at"), auto_now_add=True)
    released_by = models.CharField(_("released by"), max_length=150, blank=True)

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_released_row"
        verbose_name = _("released row")
        verbose_name_plural = _("released rows")
        constraints = [
            models.UniqueConstraint(fields=["database", "outbox_id"], name="outbox_released_once")
        ]

    def __str__(self) -> str:
        return f"#{self.outbox_id} on {self.database}"


def open_earlier_rows(alias: str) -> models.QuerySet:
    """For ``OuterRef`` rows: earlier rows of the same topic and key that still hold it."""
    from django_outbox.models.outbox import OutboxMessage, Status

    released = ReleasedRow.objects.using(alias).filter(database=alias, outbox_id=OuterRef("pk"))
    return (
        OutboxMessage.objects.using(alias)
        .filter(
            topic=OuterRef("topic"),
            message_key=OuterRef("message_key"),
            pk__lt=OuterRef("pk"),
        )
        .filter(Q(status=Status.PENDING) | (Q(status=Status.DEAD) & ~Exists(released)))
    )


_Rows = TypeVar("_Rows", bound=models.QuerySet)


def in_key_order(queryset: _Rows, alias: str) -> _Rows:
    """``queryset`` without the rows strict order holds back (all rows when it is off)."""
    strict = outbox_settings.strict_order
    if strict is False or strict == frozenset():
        return queryset
    blocked = Exists(open_earlier_rows(alias))
    if strict is True:
        return queryset.exclude(blocked)
    return queryset.exclude(Q(event_type__in=sorted(strict)) & blocked)


def blocked(queryset: _Rows, alias: str) -> _Rows:
    """The pending rows of ``queryset`` that strict order holds behind an earlier row."""
    return queryset.filter(Exists(open_earlier_rows(alias)))


def release_keys(dead_rows: models.QuerySet, alias: str, who: str = "") -> int:
    """Let later rows of each key go ahead of these dead rows; return how many were released."""
    from django_outbox.models.outbox import Status

    ids = list(dead_rows.filter(status=Status.DEAD).values_list("pk", flat=True))
    existing = set(
        ReleasedRow.objects.using(alias)
        .filter(database=alias, outbox_id__in=ids)
        .values_list("outbox_id", flat=True)
    )
    new = [
        ReleasedRow(outbox_id=pk, database=alias, released_by=who[:150])
        for pk in ids
        if pk not in existing
    ]
    ReleasedRow.objects.using(alias).bulk_create(new, ignore_conflicts=True)
    return len(new)
