"""Deleting old rows from a busy table: small chunks by primary key.

The cost of a prune follows the old rows, not the table. The walk goes up the
primary key, one window of ``chunk`` ids at a time (each a short index range scan),
from the oldest row, and stops at the first window in which every row was created
at or after the cutoff: rows are created in id order, and a row created after the
cutoff cannot have been last changed before it, so the rest of the table cannot
match. Without that stop, the listing that looks for the last matching rows reads
every younger row, the whole table on a table that only grows by its history. A
row whose creation time is out of id order (writers whose clocks differ) only
delays the stop, or is left for a later run; a whole window of them would be needed
to stop early. Every ``DELETE`` checks the whole condition again.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from django.db import models
from django.db.models import Min, Q

#: Rows deleted per statement: keeps locks and undo logs small.
PRUNE_CHUNK = 5_000


def chunks(
    queryset: models.QuerySet,
    chunk: int,
    created: tuple[str, datetime.datetime] | None = None,
) -> Iterator[list[int]]:
    """The ids of ``queryset``'s rows, in primary key order, at most ``chunk`` at a time.

    With ``created`` (the model's creation time field, and the cutoff), the walk stops
    at the first window of ``chunk`` ids holding rows created at or after the cutoff
    only (see the module); without, it reads until no row matches.
    """
    if created is None:
        after = None
        while True:
            page = queryset if after is None else queryset.filter(pk__gt=after)
            ids = list(page.order_by("pk").values_list("pk", flat=True)[:chunk])
            if ids:
                yield ids
            if len(ids) < chunk:
                return
            after = ids[-1]
    field, cutoff = created
    table = queryset.model._base_manager.using(queryset.db)
    old = Q(**{f"{field}__lt": cutoff}) | Q(**{f"{field}__isnull": True})
    start = table.aggregate(first=Min("pk"))["first"]
    while start is not None:
        window = {"pk__gte": start, "pk__lt": start + chunk}
        ids = list(queryset.filter(**window).order_by("pk").values_list("pk", flat=True))
        if ids:
            yield ids
        elif not table.filter(**window).exists():  # a gap in the ids: jump it
            start = table.filter(pk__gte=start).aggregate(first=Min("pk"))["first"]
            continue
        elif not table.filter(old, **window).exists():
            return
        start += chunk


def delete_in_chunks(
    queryset: models.QuerySet,
    chunk: int | None = None,
    created: tuple[str, datetime.datetime] | None = None,
) -> int:
    """Delete the rows of ``queryset``, ``chunk`` ids per statement; return how many went.

    ``created``: see ``chunks``.
    """
    return sum(
        delete_chunk(queryset, ids) for ids in chunks(queryset, chunk or PRUNE_CHUNK, created)
    )


def count_in_chunks(
    queryset: models.QuerySet,
    chunk: int | None = None,
    created: tuple[str, datetime.datetime] | None = None,
) -> int:
    """How many rows ``delete_in_chunks`` would delete now, read the same way."""
    return sum(len(ids) for ids in chunks(queryset, chunk or PRUNE_CHUNK, created))


def delete_chunk(queryset: models.QuerySet, ids: list[int]) -> int:
    """Delete the rows among ``ids`` that *still* match ``queryset``.

    The condition is checked again in the ``DELETE``: a row that changed since its id
    was read (re-queued by an operator, say) stays.
    """
    return queryset.filter(pk__in=ids).order_by().delete()[0]
