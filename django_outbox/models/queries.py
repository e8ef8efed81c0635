"""The read queries of the outbox table: rows by status and by what ``next_retry_at``
says (due, in flight, backing off, scheduled), the prunable rows, and the locking reads.

``OutboxQueries`` is a mixin of ``OutboxMessageQuerySet`` (``outbox``); nothing here
changes a row's state (``transitions`` does), except ``prune``, which deletes the
finished rows in chunks (``pruning``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.db import connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from django_outbox.models import pruning
from django_outbox.models.pruning import count_in_chunks, delete_in_chunks
from django_outbox.models.statuses import FINAL_STATUSES, SCHEDULED, Status, whole_second

if TYPE_CHECKING:
    from typing_extensions import Self

    from django_outbox.models.outbox import OutboxMessage  # noqa: F401 (the base's type)


def id_list(ids: Iterable[int]) -> str:
    """``1,2,3``: ids as SQL integers (``int()`` of each: nothing else can get in)."""
    return ",".join(str(int(pk)) for pk in ids)


def concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """The column-backed field ``name`` of ``model``."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


class OutboxQueries(models.QuerySet["OutboxMessage"]):
    """The outbox rows by intent; the mixin of every read of ``OutboxMessageQuerySet``."""

    def pending(self) -> Self:
        return self.filter(status=Status.PENDING)

    def due(self, now: datetime.datetime | None = None) -> Self:
        """Pending rows whose retry window (or relay lease) is over or never set."""
        now = now or timezone.now()
        return self.filter(
            Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now), status=Status.PENDING
        )

    def in_flight(self, now: datetime.datetime | None = None) -> Self:
        """Pending rows a relay has claimed and whose lease has not run out."""
        now = now or timezone.now()
        return self.filter(
            status=Status.PENDING, next_retry_at__gt=now, next_retry_at=whole_second()
        )

    def backing_off(self, now: datetime.datetime | None = None) -> Self:
        """Pending rows waiting for their retry window after a failure (not ``scheduled``)."""
        now = now or timezone.now()
        return (
            self.filter(status=Status.PENDING, next_retry_at__gt=now)
            .exclude(next_retry_at=whole_second())
            .exclude(SCHEDULED)
        )

    def scheduled(self, now: datetime.datetime | None = None) -> Self:
        """Pending rows published for later (``publish_event(deliver_at=...)``), not yet due.

        Like a backoff, never a whole second; unlike one, never tried and no error:
        ``retry_count = 0`` and ``last_error IS NULL`` (a failure sets both, a relay
        giving a row back later sets ``last_error``).
        """
        now = now or timezone.now()
        return self.filter(SCHEDULED, status=Status.PENDING, next_retry_at__gt=now).exclude(
            next_retry_at=whole_second()
        )

    def published(self) -> Self:
        return self.filter(status=Status.PUBLISHED)

    def consumed(self) -> Self:
        return self.filter(status=Status.CONSUMED)

    def dead(self) -> Self:
        return self.filter(status=Status.DEAD)

    def finished_before(
        self, cutoff: datetime.datetime, statuses: tuple[str, ...] = (Status.CONSUMED,)
    ) -> Self:
        """Rows in ``statuses`` whose last change is older than ``cutoff``.

        Only final statuses count, and ``published`` (opt-in, for events that no
        consumer here marks consumed: handled by another service, or of a type no
        handler knows); never ``pending``.
        """
        prunable = [s for s in statuses if s in FINAL_STATUSES or s == Status.PUBLISHED]
        return self.filter(status__in=prunable, updated_at__lt=cutoff)

    def published_before(self, cutoff: datetime.datetime) -> Self:
        """``published`` rows whose last change is older than ``cutoff``."""
        return self.filter(status=Status.PUBLISHED, updated_at__lt=cutoff)

    def prune(
        self,
        cutoff: datetime.datetime,
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """Delete rows in ``statuses`` older than ``cutoff``, in chunks; return how many went.

        ``consumed``, ``dead`` and (opt-in) ``published`` rows can go, never
        ``pending``; one short statement per chunk keeps locks small on a busy table,
        and each re-checks the condition.
        """
        rows = self.finished_before(cutoff, statuses)
        return delete_in_chunks(rows, chunk, created=("created_at", cutoff))

    def prune_kept(
        self,
        cutoff: datetime.datetime,
        keep: Callable[[list[Any]], None],
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """``prune``, each chunk handed to ``keep`` (the archive) before it is deleted.

        Per chunk, in one transaction: the rows that still match are locked and read,
        ``keep`` writes them durably (it raises if it cannot: nothing of that chunk is
        deleted), and exactly those rows are deleted. No network call in between: an
        archive is a local file.
        """
        rows = self.finished_before(cutoff, statuses)
        deleted = 0
        for ids in pruning.chunks(rows, chunk or pruning.PRUNE_CHUNK, ("created_at", cutoff)):
            with transaction.atomic(using=self.db):
                locked = list(rows.filter(pk__in=ids).order_by("pk").select_for_update())
                if not locked:
                    continue
                keep(locked)
                deleted += self.filter(pk__in=[row.pk for row in locked]).delete()[0]
        return deleted

    def count_prunable(
        self,
        cutoff: datetime.datetime,
        statuses: tuple[str, ...] = (Status.CONSUMED,),
        chunk: int | None = None,
    ) -> int:
        """How many rows ``prune`` would delete now, read as it reads them: the rows past
        the last one created before ``cutoff`` are not read (pruning.py)."""
        rows = self.finished_before(cutoff, statuses)
        return count_in_chunks(rows, chunk, created=("created_at", cutoff))

    def with_ids(self, ids: Iterable[int]) -> Self:
        """The rows among ``ids``, written into the SQL as integers (see ``id_list``).

        ``filter(pk__in=ids)`` adapts one parameter per id: for the relay's batches of
        hundreds of rows, that was most of the CPU a claim or a write-back cost.
        """
        quote = connections[self.db].ops.quote_name
        id_column = concrete_field(self.model, "id").column or "id"
        column = f"{quote(self.model._meta.db_table)}.{quote(id_column)}"
        # extra(), not a RawSQL filter: MySQL would get "(... IN (...)) = 1", which its
        # optimizer cannot read as a range of the primary key (a locking read would
        # then lock every row it examined).
        rows = self.extra(where=[f"{column} IN ({id_list(ids) or 'NULL'})"])
        return rows  # type: ignore[return-value]

    def locked_for_handling(self, pks: Iterable[int]) -> Self:
        """The rows ``pks``, locked ``FOR UPDATE`` in ascending id order, in one query.

        The consumer's only way to lock outbox rows: one order everywhere, so two
        consumers, or a consumer and a relay writing back in id order, cannot deadlock.
        """
        return self.select_for_update().filter(pk__in=sorted(set(pks))).order_by("pk")
