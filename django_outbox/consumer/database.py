"""The database as the consumer sees it: is it unreachable, or is the record at fault?"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import InterfaceError, OperationalError, connections

#: Errors that mean "the database is unreachable right now", not "this record is bad".
DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def drop_connections() -> None:
    """Close this thread's connections, except those inside someone else's transaction."""
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue  # someone else's transaction (a test's); not ours to close
        try:
            connection.close()
        except Exception:  # a dead connection may fail to close; it is gone either way
            pass


def databases_answer(aliases: Iterable[str]) -> bool:
    """True when each of ``aliases`` answers ``SELECT 1``."""
    try:
        for alias in aliases:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
    except DATABASE_ERRORS:
        return False
    return True
