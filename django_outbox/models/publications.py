"""Where Kafka put each published row: ``Publication``, a table of the app's own.

The legacy table says *that* a row was published (``published_at``), not *where*.
``Publication`` keeps, per acknowledged send, the topic, partition and offset Kafka
answered with, the relay that sent it (``hostname:pid``) and when. It is written only
by ``RelayTransitions.mark_published``, in the transaction of the fenced write-back
that marks the rows ``published`` (one ``INSERT`` per batch, after the acks, never in a
transaction of its own), and only for the rows that write-back changed. A row sent
again (an operator's "deliver again") gets one more entry.

Rows published by the Go service's relay have no entry: the admin's time line says
"published by another relay". ``outbox_prune`` deletes the entries of pruned rows
(``prune``), never those of a row still in the table.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import Exists, OuterRef
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField
from django_outbox.models.attempts import worker_name
from django_outbox.models.pruning import count_in_chunks, delete_in_chunks

#: Where one record went: (partition, offset), or None when the client did not say.
Position = tuple[int, int] | None


class PublicationQuerySet(models.QuerySet["Publication"]):
    def of(self, outbox_id: int) -> PublicationQuerySet:
        """The publications of one outbox row, newest first (indexed)."""
        return self.filter(outbox_id=outbox_id).order_by("-id")

    def orphaned(
        self, cutoff: datetime.datetime, going: models.QuerySet | None = None
    ) -> PublicationQuerySet:
        """Entries older than ``cutoff`` whose outbox row is gone (pruned), or is among
        ``going`` (the rows a prune is about to delete: its dry run)."""
        # By name: ``outbox`` imports this module (through ``transitions``).
        outbox = apps.get_model("django_outbox", "OutboxMessage")
        rows = outbox._base_manager.using(self.db)
        gone: Any = ~Exists(rows.filter(pk=OuterRef("outbox_id")))  # Q once or-ed
        if going is not None:
            gone |= Exists(going.filter(pk=OuterRef("outbox_id")))
        return self.filter(gone, published_at__lt=cutoff)

    def prune(self, cutoff: datetime.datetime) -> int:
        """Delete the entries of rows pruned before ``cutoff``, in chunks; return how many."""
        return delete_in_chunks(self.orphaned(cutoff), created=("published_at", cutoff))

    def count_prunable(self, cutoff: datetime.datetime, going: models.QuerySet) -> int:
        """How many entries ``prune`` would delete once the rows ``going`` are deleted."""
        return count_in_chunks(self.orphaned(cutoff, going), created=("published_at", cutoff))


class Publication(models.Model):
    """One outbox row acknowledged by Kafka: the topic, partition and offset it went to."""

    id = models.BigAutoField(_("id"), primary_key=True)
    outbox_id = models.BigIntegerField(_("outbox id"))
    topic = models.CharField(_("topic"), max_length=255)
    # Null only when the client's answer carried no position (a row confirmed not to
    # be poison by a second, lone send).
    partition = models.IntegerField(_("partition"), null=True, blank=True)
    offset = models.BigIntegerField(_("offset"), null=True, blank=True)
    worker = models.CharField(_("relay (host:pid)"), max_length=255, blank=True)
    published_at = MillisecondDateTimeField(_("published at"))

    objects = PublicationQuerySet.as_manager()

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_publication"
        verbose_name = _("publication")
        verbose_name_plural = _("publications")
        indexes = [
            models.Index(fields=["outbox_id", "id"], name="outbox_publication_row_idx"),
            models.Index(fields=["published_at"], name="outbox_publication_time_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.outbox_id} {self.topic}[{self.partition}]@{self.offset}"


def record(
    alias: str,
    published: Iterable[tuple[int, str, Position]],
    now: datetime.datetime,
) -> None:
    """One ``INSERT`` of the publications ``(outbox id, topic, position)``."""
    worker = worker_name()
    Publication.objects.using(alias).bulk_create(
        [
            Publication(
                outbox_id=pk,
                topic=topic,
                partition=None if position is None else position[0],
                offset=None if position is None else position[1],
                worker=worker,
                published_at=now,
            )
            for pk, topic, position in published
        ]
    )
