"""The one place that touches private APIs of Django and kafka-python.

Each use is pinned by a test (tests/test_compat.py) against the versions we
support, so that an upgrade that changes them fails there, loudly.
"""

from __future__ import annotations

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
