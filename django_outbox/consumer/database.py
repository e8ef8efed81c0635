"""The database as the consumer sees it: is it unreachable, or is the record at fault?
And which of its connections the consumer closes between polls."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import InterfaceError, OperationalError, close_old_connections, connections

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


def recycle_connections(idle: bool) -> None:
    """``close_old_connections()``, but keep ``CONN_MAX_AGE = 0`` connections while busy.

    A poll is this worker's request; closing after each one would open a connection
    per poll, some 40 ms on PostgreSQL (a backend process each), and that was most
    of the fast path's latency there. They are closed once a poll comes back empty.
    """
    if idle:
        close_old_connections()
        return
    for connection in connections.all(initialized_only=True):
        if connection.settings_dict["CONN_MAX_AGE"] != 0:
            connection.close_if_unusable_or_obsolete()
