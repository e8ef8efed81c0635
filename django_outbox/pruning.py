"""Deleting old rows from a busy table: small chunks by primary key."""

from __future__ import annotations

from django.db import models

#: Rows deleted per statement: keeps locks and undo logs small.
PRUNE_CHUNK = 5_000


def delete_in_chunks(queryset: models.QuerySet, chunk: int | None = None) -> int:
    """Delete the rows of ``queryset``, ``chunk`` ids per statement; return how many went."""
    chunk = chunk or PRUNE_CHUNK
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:chunk])
        if not ids:
            return deleted
        deleted += delete_chunk(queryset, ids)


def delete_chunk(queryset: models.QuerySet, ids: list[int]) -> int:
    """Delete the rows among ``ids`` that *still* match ``queryset``.

    The condition is checked again in the ``DELETE``: a row that changed since its id
    was read (re-queued by an operator, say) stays.
    """
    return queryset.filter(pk__in=ids).order_by().delete()[0]
