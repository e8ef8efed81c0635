"""Deleting old rows from a busy table: small chunks by primary key.

The cost of a prune follows the rows it deletes, not the table. Two things keep it
so. Each chunk starts after the last id of the one before (no walk past the rows
already deleted, whose index entries PostgreSQL keeps until VACUUM). And the walk
stops before the first row created at or after the cutoff: rows are created in id
order, and a row created after the cutoff has not been changed before it, so no
later row can match. That first row is found by a binary search on the primary key
(``created_before``: some twenty index lookups for a million rows), where a filter
on the creation time alone would read the whole table. A row whose creation time
is out of id order (clocks of two writers apart) is at worst left for the next run:
every ``DELETE`` checks the whole condition again.
"""

from __future__ import annotations

import datetime
from typing import TypeVar

from django.db import models

Rows = TypeVar("Rows", bound=models.QuerySet)

#: Rows deleted per statement: keeps locks and undo logs small.
PRUNE_CHUNK = 5_000


def created_before(queryset: Rows, field: str, moment: datetime.datetime) -> Rows:
    """``queryset`` narrowed to the ids below the first row created at or after ``moment``.

    ``field`` is the model's creation time; rows without one count as old.
    """
    rows = queryset.model._base_manager.using(queryset.db).order_by("pk")
    first = rows.values_list("pk", flat=True).first()
    last = rows.reverse().values_list("pk", flat=True).first()
    if first is None or last is None:
        return queryset
    # Invariant: every row below ``low`` was created before ``moment``; the first
    # row at or above ``high`` (if any) was not.
    low, high = first, last + 1
    while low < high:
        middle = (low + high) // 2
        found = rows.filter(pk__gte=middle).values_list("pk", field).first()
        if found is None:
            high = middle
        elif found[1] is not None and found[1] >= moment:
            high = middle
        else:
            low = found[0] + 1
    return queryset.filter(pk__lt=low)


def delete_in_chunks(queryset: models.QuerySet, chunk: int | None = None) -> int:
    """Delete the rows of ``queryset``, ``chunk`` ids per statement; return how many went."""
    chunk = chunk or PRUNE_CHUNK
    deleted = 0
    after = None
    while True:
        page = queryset if after is None else queryset.filter(pk__gt=after)
        ids = list(page.order_by("pk").values_list("pk", flat=True)[:chunk])
        if ids:
            deleted += delete_chunk(queryset, ids)
        if len(ids) < chunk:
            return deleted
        after = ids[-1]


def delete_chunk(queryset: models.QuerySet, ids: list[int]) -> int:
    """Delete the rows among ``ids`` that *still* match ``queryset``.

    The condition is checked again in the ``DELETE``: a row that changed since its id
    was read (re-queued by an operator, say) stays.
    """
    return queryset.filter(pk__in=ids).order_by().delete()[0]
