"""Deleting old rows from a busy table: small chunks by primary key."""

from __future__ import annotations

from django.db import models

#: Rows deleted per statement: keeps locks and undo logs small.
PRUNE_CHUNK = 5_000


def delete_in_chunks(queryset: models.QuerySet, chunk: int | None = None) -> int:
    """Delete the rows of ``queryset``, ``chunk`` ids per statement; return how many went."""
    chunk = chunk or PRUNE_CHUNK
    manager = queryset.model._default_manager.using(queryset.db)
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:chunk])
        if not ids:
            return deleted
        deleted += manager.filter(pk__in=ids).delete()[0]
