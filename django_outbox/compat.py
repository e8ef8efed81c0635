"""The one place that touches private APIs of Django and kafka-python.

Each use is pinned by a test (tests/test_compat.py) against the versions we
support, so that an upgrade that changes them fails there, loudly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def on_commit_callbacks(connection: Any) -> list[Any]:
    """Django's list of the on-commit callbacks of ``connection``'s transaction.

    Each entry is ``(savepoint ids, callable, robust)`` (Django 4.2 to 5.2).
    """
    return list(connection.run_on_commit)


def on_commit_count(connection: Any) -> int:
    """How many on-commit callbacks ``connection``'s transaction holds now."""
    return len(connection.run_on_commit)


def wrap_on_commit_callbacks(
    connection: Any, start: int, wrap: Callable[[Callable[[], Any]], Callable[[], Any]]
) -> int:
    """Replace each callback registered since ``start`` by ``wrap(callback)``; how many.

    The savepoint ids and the ``robust`` flag of each entry stay as Django wrote them,
    so a rolled-back savepoint still drops its callbacks, and the order is kept.
    """
    hooks = connection.run_on_commit
    for index in range(start, len(hooks)):
        savepoints, func, robust = hooks[index]
        hooks[index] = (savepoints, wrap(func), robust)
    return max(len(hooks) - start, 0)


def drop_on_commit_callbacks(connection: Any, start: int) -> None:
    """Forget the on-commit callbacks registered since ``start`` (a savepoint rolled back
    that Django did not make itself, so that it cannot drop them as it does its own)."""
    del connection.run_on_commit[start:]


#: libpq's PQTRANS_INERROR, psycopg's ``TransactionStatus.INERROR`` and psycopg2's
#: ``TRANSACTION_STATUS_INERROR``: a statement failed, the transaction is aborted.
_PQTRANS_INERROR = 3


def transaction_failed(connection: Any) -> bool:
    """Whether ``connection``'s PostgreSQL transaction is aborted (a caught error).

    Asked of the driver's own connection, without a round trip: psycopg 3's
    ``info.transaction_status``, psycopg2's ``get_transaction_status()``. Always False
    on the other databases, whose transactions outlive a failed statement.
    """
    raw = connection.connection
    if connection.vendor != "postgresql" or raw is None:
        return False
    info = getattr(raw, "info", None)  # psycopg 3
    status = info.transaction_status if info is not None else raw.get_transaction_status()
    return int(status) == _PQTRANS_INERROR


def joins_statements(cursor: Any) -> bool:
    """Whether the driver's ``cursor`` sends ``"A; B"`` as one query, parameters and all.

    psycopg2 does (client-side binding; the last statement's result is the cursor's);
    so does psycopg 3's ``ClientCursor``, Django's default (``nextset()`` then moves to
    the second result). Not a named (server-side) cursor of either, nor psycopg 3
    with ``server_side_binding``, nor mysqlclient without ``CLIENT.MULTI_STATEMENTS``,
    nor sqlite3.
    """
    module = type(cursor).__module__
    if module.startswith("psycopg2"):
        return getattr(cursor, "name", None) is None  # a named cursor DECLAREs its query
    # Not imported: no cursor of it exists. (Importing it here cost a SQLite or MariaDB
    # consumer 0.1 s in its first chunk, 83 modules it never used.)
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    return isinstance(cursor, psycopg.ClientCursor)


def to_second_result(cursor: Any) -> None:
    """After ``"A; B"`` through a cursor that ``joins_statements``: B's result current."""
    if not type(cursor).__module__.startswith("psycopg2"):
        cursor.nextset()


def test_case_savepoints(connection: Any) -> set[str | None] | None:
    """The savepoint ids of the atomic blocks a Django ``TestCase`` holds open.

    None when ``connection``'s transaction, if any, is not a ``TestCase``'s (Django
    marks those blocks ``_from_testcase``; pytest-django's ``db`` uses the same
    ``TestCase`` machinery). The outermost block is the transaction, without a
    savepoint; ``savepoint_ids`` lists the savepoints of the blocks inside it.
    """
    blocks = connection.atomic_blocks
    depth = 0
    while depth < len(blocks) and getattr(blocks[depth], "_from_testcase", False):
        depth += 1
    if not depth:
        return None
    return set(connection.savepoint_ids[: depth - 1])


def open_savepoints(connection: Any) -> set[str | None]:
    """The savepoint ids of ``connection``'s open atomic blocks (None: no savepoint)."""
    return set(connection.savepoint_ids)
