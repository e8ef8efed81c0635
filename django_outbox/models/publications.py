"""Where Kafka put each published row: ``Publication``, a table of the app's own.

The legacy table says *that* a row was published (``published_at``), not *where*.
``Publication`` keeps, per acknowledged send, the topic, partition and offset Kafka
answered with, the relay that sent it (``hostname:pid``) and when. It is written only
by ``RelayTransitions.mark_published``, in the transaction of the fenced write-back
that marks the rows ``published`` (one ``INSERT`` per batch, per topic on PostgreSQL;
after the acks, never in a transaction of its own), and only for the rows that
write-back changed. A row sent
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
from django.db import connections, models, transaction
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
    """One ``INSERT`` (per topic on PostgreSQL) of the publications ``(outbox id, topic,
    position)``.

    Hand-written rather than ``bulk_create``: a relay writes one per batch, and building
    and compiling hundreds of model instances cost as much CPU as the rest of the
    write-back (bench/relay_bench.py --phases). Ids, partitions and offsets go into the
    SQL (or PostgreSQL's arrays) as integers (``int()`` of each: nothing else can get
    in); topics, worker and time as parameters.
    """
    entries = list(published)
    if not entries:
        return
    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = {f.name: f for f in Publication._meta.concrete_fields}
    columns = ",".join(
        quote(fields[name].column or name)
        for name in ("outbox_id", "topic", "partition", "offset", "worker", "published_at")
    )
    table = quote(Publication._meta.db_table)
    worker = fields["worker"].get_db_prep_save(worker_name(), connection)
    at = fields["published_at"].get_db_prep_save(now, connection)
    with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _insert_postgresql(cursor, table, columns, entries, worker, at)
            return
        # Named parameters, each once: every row names the same few (topics, worker,
        # time); a parameter per row cost more CPU than the rest of the write-back.
        params: dict[str, Any] = {"worker": worker, "at": at}
        names: dict[str, str] = {}
        for topic in dict.fromkeys(entry[1] for entry in entries):
            names[topic] = f"topic{len(names)}"
            params[names[topic]] = topic
        values = ",".join(
            f"({int(pk)},%({names[topic]})s,{_integer(position, 0)},{_integer(position, 1)},"
            "%(worker)s,%(at)s)"
            for pk, topic, position in entries
        )
        cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", params)


def _insert_postgresql(
    cursor: Any, table: str, columns: str, entries: list[Any], worker: Any, at: Any
) -> None:
    """One ``INSERT ... SELECT FROM unnest(arrays)`` per topic: six parameters, whatever
    the batch (psycopg's client-side binding costs CPU per placeholder in the text)."""
    for topic in dict.fromkeys(entry[1] for entry in entries):
        mine = [(pk, position) for pk, t, position in entries if t == topic]
        arrays = [
            "{" + ",".join(str(int(pk)) for pk, _ in mine) + "}",
            "{" + ",".join(_integer(position, 0) for _, position in mine) + "}",
            "{" + ",".join(_integer(position, 1) for _, position in mine) + "}",
        ]
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT v.id, %s, v.p, v.o, %s, %s "
            "FROM unnest(%s::bigint[], %s::integer[], %s::bigint[]) AS v(id, p, o)",
            [topic, worker, at, *arrays],
        )


def _integer(position: Position, index: int) -> str:
    return "NULL" if position is None else str(int(position[index]))
